"""Task post-processing in numpy: what a model's raw outputs mean (labels, spans, boxes, text).

Each task head's outputs decode the way transformers' own post-processors decode them, so a
device gets the same answer without torch or transformers: classification scores and top-k
labels (sequence, image, audio), one label per token, the best answer span, DETR boxes above
a score threshold (``DetrImageProcessor.post_process_object_detection`` without rescaling),
Mask2Former semantic maps (``post_process_semantic_segmentation`` at the mask resolution, not
resized to 384x384), depth maps, and CTC greedy transcripts (``Wav2Vec2CTCTokenizer.decode`` of
the argmax ids). transformers' versions take torch tensors, which a device does not have;
these are the same formulas on numpy arrays, and ``tests/test_postprocess.py`` checks them
against transformers on the same outputs.

The manifest's optional ``postprocess`` block (:class:`Decoding`) carries what decoding needs
from the source model: class names in index order, and for CTC the vocabulary, blank id and
word delimiter. Like :mod:`edgeexport.generation`, this module imports neither torch nor a
runtime (the :mod:`edgeexport.reference` package imports torch, so it does not live there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeexport.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from edgeexport.artifact import Manifest

# Tasks whose outputs index the config's id2label classes.
LABELLED_TASKS = frozenset({"sequence-classification", "token-classification", "image-classification",
                            "object-detection", "segmentation", "audio-classification"})
QA_MAX_ANSWER_TOKENS = 30  # transformers' question-answering pipeline default (max_answer_len=15 words)


@dataclass(frozen=True)
class Decoding:
    """The manifest's ``postprocess`` block.

    Attributes:
        labels: Class names in index order (CTC: the vocabulary); empty when the source had none,
            and classes then show as their index.
        blank: CTC blank (pad) token id.
        word_delimiter: CTC token that separates words (``|`` for Wav2Vec2), printed as a space.
    """

    labels: list[str] = field(default_factory=list)
    blank: int | None = None
    word_delimiter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decoding:
        """Parse a manifest block; raise :class:`ArtifactError` naming what is malformed."""
        labels, blank, delimiter = data.get("labels", []), data.get("blank"), data.get("word_delimiter")
        if not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)):
            raise ArtifactError("manifest postprocess.labels must be a list of strings; re-run convert")
        if blank is not None and (not isinstance(blank, int) or isinstance(blank, bool)):
            raise ArtifactError("manifest postprocess.blank must be an int; re-run convert")
        if delimiter is not None and not isinstance(delimiter, str):
            raise ArtifactError("manifest postprocess.word_delimiter must be a string; re-run convert")
        return cls(labels=labels, blank=blank, word_delimiter=delimiter)

    @classmethod
    def of(cls, manifest: Manifest) -> Decoding:
        """The decoding of an artifact (empty for artifacts converted before the block existed)."""
        return cls.from_dict(manifest.postprocess)

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (scores are reported, not fed back)."""
    shifted = logits.astype(np.float64) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def top_classes(logits: np.ndarray, decoding: Decoding, k: int = 5) -> list[list[dict[str, Any]]]:
    """Per row of ``(batch, classes)`` logits: the ``k`` best classes with softmax scores, best first."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [[{"label": decoding.label(int(i)), "index": int(i), "score": float(row[i])} for i in best]
            for row, best in zip(probabilities, order)]


def token_classes(logits: np.ndarray, decoding: Decoding) -> list[list[str]]:
    """Per row of ``(batch, sequence, classes)`` logits: the best label of every token."""
    return [[decoding.label(int(i)) for i in row] for row in logits.argmax(axis=-1)]


def answer_spans(start_logits: np.ndarray, end_logits: np.ndarray, *,
                 max_tokens: int = QA_MAX_ANSWER_TOKENS) -> list[dict[str, Any]]:
    """Per row: the span ``start <= end < start + max_tokens`` with the highest start x end probability."""
    spans = []
    for start, end in zip(softmax(start_logits), softmax(end_logits)):
        scores = np.triu(np.tril(np.outer(start, end), max_tokens - 1))  # end >= start, end - start < max_tokens
        best = int(scores.argmax())
        first, last = divmod(best, scores.shape[1])
        spans.append({"start": first, "end": last, "score": float(scores[first, last])})
    return spans


def detections(logits: np.ndarray, boxes: np.ndarray, decoding: Decoding, *,
               threshold: float = 0.5) -> list[list[dict[str, Any]]]:
    """DETR outputs -> per image, the queries whose best real class scores above ``threshold``.

    The last class is "no object". Boxes are ``(x0, y0, x1, y1)`` relative to the image (0..1);
    multiply by its width and height for pixels.
    """
    probabilities = softmax(logits)[..., :-1]
    scores, labels = probabilities.max(axis=-1), probabilities.argmax(axis=-1)
    center_x, center_y, width, height = np.moveaxis(boxes.astype(np.float64), -1, 0)
    corners = np.stack([center_x - width / 2, center_y - height / 2, center_x + width / 2, center_y + height / 2], -1)
    return [[{"label": decoding.label(int(label)), "index": int(label), "score": float(score),
              "box": [float(v) for v in box]}
             for score, label, box in zip(s, l, b) if score > threshold]
            for s, l, b in zip(scores, labels, corners)]


def semantic_maps(class_queries_logits: np.ndarray, masks_queries_logits: np.ndarray) -> np.ndarray:
    """Mask2Former outputs -> ``(batch, height, width)`` class index per pixel at the masks' resolution.

    Each query's class probabilities (without the null class) weight its sigmoid mask; a pixel
    takes the class with the highest total.
    """
    classes = softmax(class_queries_logits)[..., :-1]
    masks = 1.0 / (1.0 + np.exp(-masks_queries_logits.astype(np.float64)))
    return np.einsum("bqc,bqhw->bchw", classes, masks).argmax(axis=1)


def ctc_transcripts(logits: np.ndarray, decoding: Decoding) -> list[str]:
    """Greedy CTC: the best token per frame, repeats merged, blanks dropped, word delimiters as spaces."""
    transcripts = []
    for ids in logits.argmax(axis=-1):
        merged = [int(i) for index, i in enumerate(ids) if index == 0 or i != ids[index - 1]]
        tokens = [" " if token == decoding.word_delimiter else token
                  for token in (decoding.label(i) for i in merged if i != decoding.blank)]
        transcripts.append(("".join(tokens) if decoding.labels else " ".join(tokens)).strip())
    return transcripts


def decode(task: str, outputs: Mapping[str, np.ndarray], decoding: Decoding, *, top_k: int = 5,
           threshold: float = 0.5) -> list[Any]:
    """The meaning of a task head's outputs, one JSON-ready entry per batch row.

    Raises:
        UsageError: a task with no post-processing (a custom module, a generation decoder).
    """
    if task in ("sequence-classification", "image-classification", "audio-classification"):
        return top_classes(outputs["logits"], decoding, top_k)
    if task == "token-classification":
        return token_classes(outputs["logits"], decoding)
    if task == "question-answering":
        return answer_spans(outputs["start_logits"], outputs["end_logits"])
    if task == "object-detection":
        return detections(outputs["logits"], outputs["pred_boxes"], decoding, threshold=threshold)
    if task == "segmentation":
        return [m.tolist() for m in semantic_maps(outputs["class_queries_logits"], outputs["masks_queries_logits"])]
    if task == "depth-estimation":
        return [{"min": float(d.min()), "max": float(d.max()), "mean": float(d.mean()), "shape": list(d.shape)}
                for d in outputs["predicted_depth"]]
    if task == "ctc":
        return ctc_transcripts(outputs["logits"], decoding)
    raise UsageError(f"task {task!r} has no post-processing; read the raw outputs with edgeexport.load(ARTIFACT)")


def describe(task: str, result: Any, decoding: Decoding) -> str:
    """One line for a person: a row of :func:`decode`'s result."""
    if task in ("sequence-classification", "image-classification", "audio-classification"):
        return ", ".join(f"{c['label']} {c['score']:.3f}" for c in result)
    if task == "token-classification":
        return " ".join(result)
    if task == "question-answering":
        return f"answer tokens {result['start']}..{result['end']} (score {result['score']:.3f})"
    if task == "object-detection":
        boxes = "; ".join(f"{d['label']} {d['score']:.2f} at ({', '.join(f'{v:.2f}' for v in d['box'])})"
                          for d in result)
        return f"{len(result)} objects: {boxes}" if result else "no object above the threshold"
    if task == "segmentation":
        classes, counts = np.unique(np.asarray(result), return_counts=True)
        shares = sorted(zip(counts, classes), reverse=True)
        return f"{len(result)}x{len(result[0])} map: " + ", ".join(f"{decoding.label(int(c))} {n / counts.sum():.1%}" for n, c in shares)
    if task == "depth-estimation":
        return (f"depth {'x'.join(map(str, result['shape']))}: min {result['min']:.3g}, max {result['max']:.3g}, "
                f"mean {result['mean']:.3g}")
    return repr(result)
