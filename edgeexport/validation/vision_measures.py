"""The measures of task agreement on photographs: depth maps, detections and segmentation maps.

Each compares the artifact's task view of the held-out photographs with the reference's
(:mod:`edgeexport.validation.agreement` holds the views, the criteria and the verdict):

- depth maps: :func:`depth_error`, the mean |error| in units of the map's own spread, and the rank
  correlation of its pixels (:func:`rank_correlation`);
- DETR detections: the queries the reference finds most object-like (:func:`top_queries`; queries keep
  their order in every runtime, so they pair by index), their classes' probabilities and the IoU of
  their boxes (:func:`box_iou`);
- Mask2Former segmentation: the per-pixel class scores (:func:`class_scores`, the maps whose argmax is the
  segmentation), their error in units of their spread (:func:`depth_error`'s measure) and their correlation after
  centring each class over the pixels (:func:`centred_correlation`: whether the map keeps its layout).
"""

from __future__ import annotations

import numpy as np

from edgeexport.processing import box_corners, mask_class_scores

TOP_QUERIES = 10  # DETR queries judged per photograph: the reference's most object-like (all of the tiny preset's)


def depth_error(got: np.ndarray, want: np.ndarray) -> float:
    """``mean |got - want| / mean |want - mean(want)|`` over one depth map: the error in units of the map's own spread.

    Scale and shift are not fitted away, although depth from one photograph is only known up to them in general: the
    artifact must reproduce the reference's numbers (GLPN's are metres), so a depth scaled by 1.3 is a failure.
    Dividing by the map's spread rather than its mean makes the measure independent of units and of the large offset a
    random-weight model may add to every pixel, which would otherwise hide any error."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    return float(np.abs(got - want).mean() / max(np.abs(want - want.mean()).mean(), 1e-12))


def rank_correlation(got: np.ndarray, want: np.ndarray) -> float:
    """Spearman's correlation of two depth maps' pixels: 1 when every pair of pixels keeps its near/far order."""
    ranks = [np.argsort(np.argsort(x.ravel(), kind="stable"), kind="stable").astype(np.float64) for x in (got, want)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / max(np.sqrt((ranks[0] ** 2).sum() * (ranks[1] ** 2).sum()), 1e-12))


def top_queries(probabilities: np.ndarray, count: int = TOP_QUERIES) -> np.ndarray:
    """``(photograph, count)`` indices of each photograph's ``count`` queries with the highest probability of a real
    class (the last class is "no object"), most object-like first: the detections a threshold would keep first."""
    return np.argsort(-probabilities[..., :-1].max(-1), axis=-1, kind="stable")[:, :count]


def box_iou(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The intersection over union of paired boxes ``(..., 4)`` in DETR's format (centre x, centre y, width, height,
    relative to the image): 1 for the same box, 0 for disjoint ones."""
    (gx0, gy0, gx1, gy1), (wx0, wy0, wx1, wy1) = (np.moveaxis(box_corners(b), -1, 0) for b in (got, want))
    overlap = (np.clip(np.minimum(gx1, wx1) - np.maximum(gx0, wx0), 0, None)
               * np.clip(np.minimum(gy1, wy1) - np.maximum(gy0, wy0), 0, None))
    union = (gx1 - gx0) * (gy1 - gy0) + (wx1 - wx0) * (wy1 - wy0) - overlap
    return overlap / np.maximum(union, 1e-12)


def class_scores(view: np.ndarray, classes: int) -> np.ndarray:
    """Mask2Former's per-pixel class scores ``(photograph, class, pixel)`` from its task view ``(photograph, query,
    classes + 1 + pixels)`` (each query's class probabilities, the null class last, then its sigmoid mask): each
    query's real classes weight its mask (:func:`edgeexport.processing.mask_class_scores`, whose argmax
    :func:`edgeexport.processing.semantic_maps` takes)."""
    view = view.astype(np.float64)
    return mask_class_scores(view[..., :classes], view[..., classes + 1:])


def centred_correlation(got: np.ndarray, want: np.ndarray) -> float:
    """The correlation of two ``(class, pixel)`` score maps after centring each class over the pixels: 1 when every
    class keeps where it is high and low, near 0 or below for a map flipped or shifted; a class's level (what a
    temperature or a scale moves) does not enter it."""
    got, want = (x.astype(np.float64) - x.mean(-1, keepdims=True) for x in (got, want))
    return float((got * want).sum() / max(np.sqrt((got * got).sum() * (want * want).sum()), 1e-30))
