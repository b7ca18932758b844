"""Per-output parity metrics between a target's outputs and the PyTorch reference.

Errors are measured against the reference output's own spread (docs/parity.md): a common
offset or a small output scale changes nothing, and a target that does not carry the
reference's information (shuffled, unrelated, rescaled, constant) fails whatever its magnitude.
Slopes and top-1 flips are judged against the noise measured in the case itself, so a genuine
artifact's noise is forgiven and a systematic change (a temperature, a swapped class, zeroed
features beside outliers) is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy.special import ndtr

from edgeexport.manifest import Bounds

SAMPLE_SIZE = 2048
TOP_K = 5
# The criterion's constants, each with its measurements in docs/parity.md ("Noise-aware checks").
SCALE_CAP = 0.1  # the most a slope may be off 1 beyond its noise, whatever the precision's scale_error
SLICE_CAP = 0.5  # the same for the worst single class or row of logits
SLOPE_Z = 3.0  # standard errors of the slope that noise may explain
MIN_SCALE_DOF = 2  # one degree of freedom (one row of two logits): the slope is the error itself
FEATURE_QUANTILE = 0.75  # features judged by their own slope: all but the worst quarter
MIN_FEATURE_ELEMENTS = 8  # elements a feature needs for its own slope
MIN_SLICE_VARIATION = 0.1  # a slice that varies by less than this share of its RMS value has no slope to judge
MIN_SLICE_SPREAD = 0.5  # nor does one whose spread is below this share of the median slice's
FLIP_Z = 4.0  # standard deviations of the top-1 flips that noise may explain
# The constants above as convert writes them into the manifest's ``criterion`` block, which
# examples/cpp-openvino/check.cpp reads: the device check judges by the numbers this module used.
CRITERION: dict[str, float] = {
    "scale_cap": SCALE_CAP, "slice_cap": SLICE_CAP, "slope_z": SLOPE_Z, "min_scale_dof": MIN_SCALE_DOF,
    "feature_quantile": FEATURE_QUANTILE, "min_feature_elements": MIN_FEATURE_ELEMENTS,
    "min_slice_variation": MIN_SLICE_VARIATION, "min_slice_spread": MIN_SLICE_SPREAD, "flip_z": FLIP_Z,
}


@dataclass(frozen=True)
class OutputSample:
    """Up to :data:`SAMPLE_SIZE` paired elements of one output (flattened, float64), for plots.

    The elements are evenly spaced over the output and always include the worst one. Kept in
    memory only: reports on disk hold the metrics, not the values.
    """

    reference: np.ndarray
    target: np.ndarray
    size: int

    @property
    def errors(self) -> np.ndarray:
        """``|target - reference|`` of the sampled elements."""
        return np.abs(self.target - self.reference)


@dataclass
class OutputComparison:
    """Errors of one output; truthy when it passed its :class:`~edgeexport.manifest.Bounds`.

    ``spread`` is the reference's RMS deviation (per row for logits) and ``magnitude`` its RMS
    value (for logits, of the centred rows: the spread); ``max_error`` and ``rms_error`` are the
    largest and the RMS error in spreads; ``floor`` is the RMS of the element-wise floor
    (``atol + rounding * max(|value|, magnitude)``: what the arithmetic cannot resolve); ``scale``
    is the slope of the target against the reference (1 when unscaled). ``max_abs``, ``mean_abs``
    and ``cosine`` are the raw error and similarity, for reading. ``feature_scale`` (outputs of two
    axes or more), ``class_scale`` and ``row_scale`` (logits) are how far the slices' own slopes
    are off 1 beyond their noise (quantile over features; worst class and row, with its index).
    Logits only: ``top1``/``top5`` are the fraction of rows whose reference argmax is the target's
    argmax / in its top 5, and ``top1_near_ties`` the fraction whose argmax moved in a way the
    case's measured noise explains (:func:`explained_flips`). ``failed`` names the checks missed.
    """

    name: str
    shape: list[int]
    passed: bool
    bounds: Bounds
    spread: float = float("nan")
    magnitude: float = float("nan")
    floor: float = float("nan")
    max_error: float = float("nan")
    rms_error: float = float("nan")
    scale: float = float("nan")
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    cosine: float = float("nan")
    top1: float | None = None
    top5: float | None = None
    top1_near_ties: float | None = None
    feature_scale: float | None = None
    worst_feature: int | None = None
    class_scale: float | None = None
    worst_class: int | None = None
    row_scale: float | None = None
    worst_row: int | None = None
    worst_index: list[int] | None = None
    failed: list[str] = field(default_factory=list)
    reason: str = ""
    sample: OutputSample | None = field(default=None, repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """The metrics as JSON-ready values (non-finite floats as None); the sample is left out."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sample", "bounds")}
        return json_ready({**values, "bounds": self.bounds.to_dict()})


def json_ready(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with non-finite floats (NaN, inf) as None, which JSON cannot hold."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}


def compare_output(name: str, target: np.ndarray, reference: np.ndarray, bounds: Bounds, *,
                   logits: bool = False) -> OutputComparison:
    """Compare one output against its bounds; never raises for bad values, it reports them.

    Args:
        name: Output name.
        target: The target's output.
        reference: PyTorch's output.
        bounds: The output's bounds (``Tolerance.for_output(name)``).
        logits: The output holds scores over its last axis: errors are taken after centring
            each row (softmax ignores a per-row offset) and top-1/top-5 agreement is measured.
            Defaults to False.
    """
    result = OutputComparison(name=name, shape=list(reference.shape), passed=False, bounds=bounds)
    if target.shape != reference.shape:
        result.failed = ["shape"]
        result.reason = f"shape {list(target.shape)} differs from the reference's {list(reference.shape)}"
        return result
    got, want = target.astype(np.float64), reference.astype(np.float64)
    bad = ~np.isfinite(got)
    if bad.any():
        result.failed = ["NaN/Inf"]
        result.reason = f"{int(bad.sum())} NaN/Inf values in the target output"
        return result
    if got.size == 0:
        result.passed, result.max_error, result.rms_error, result.max_abs = True, 0.0, 0.0, 0.0
        return result
    rows = logits and want.ndim >= 1 and want.shape[-1] > 1
    errors = _measure(result, got, want, bounds, rows=rows)
    noise = _noise(errors, bounds) if rows else None
    if rows:
        result.top1, result.top5 = _topk_agreement(got, want)
        result.top1_near_ties = explained_flips(got, want, noise=noise)
    if want.ndim >= 2:
        _slice_scales(result, errors, bounds, noise)
    misses = _misses(result, bounds, errors, logits=rows)
    result.passed = not misses
    result.failed = list(misses)
    result.reason = "; ".join(misses.values())
    return result


@dataclass(frozen=True)
class _Errors:
    """The compared values of one output: the error ``d``, the centred reference ``rc`` (``rc +
    level`` is the reference compared: each logits row centred, any other output as it is), the
    element-wise floor ``f``, the spread ``s`` and the degrees of freedom of the centred values."""

    d: np.ndarray
    rc: np.ndarray
    level: float
    f: np.ndarray
    s: float
    dof: int

    def excess(self) -> np.ndarray:
        """``|d|`` beyond each element's floor (0 within it)."""
        return np.maximum(np.abs(self.d) - self.f, 0.0)


def _measure(result: OutputComparison, got: np.ndarray, want: np.ndarray, bounds: Bounds, *,
             rows: bool) -> _Errors:
    """Fill spread, floor, errors in spreads, slope, raw errors, cosine, worst index and the plot sample."""
    axis = -1 if rows else None
    got_c = got - got.mean(axis=axis, keepdims=rows)
    want_c = want - want.mean(axis=axis, keepdims=rows)
    error = got_c - want_c if rows else got - want
    spread = float(np.sqrt(np.mean(want_c ** 2)))
    # The floor scales with the values compared (a per-row offset of logits widens nothing) and,
    # element by element, with the value the precision stores: fp16 rounds 80 to 0.03, 0.5 to 2e-4.
    result.magnitude = spread if rows else float(np.sqrt(np.mean(want ** 2)))
    floor = bounds.atol + bounds.rounding * np.maximum(np.abs(want), result.magnitude)
    dof = want.size - (want.size // want.shape[-1] if rows else 1)
    errors = _Errors(error, want_c, 0.0 if rows else float(want.mean()), floor, spread, dof)
    worst = np.unravel_index(int(np.argmax(np.abs(error) - floor)), error.shape)
    max_dev, rms_dev = float(np.abs(error).max()), float(np.sqrt(np.mean(error ** 2)))
    result.spread = spread
    result.floor = float(np.sqrt(np.mean(floor ** 2)))
    result.max_error = max_dev / spread if spread else (0.0 if max_dev == 0 else float("inf"))
    result.rms_error = rms_dev / spread if spread else (0.0 if rms_dev == 0 else float("inf"))
    result.scale = float(np.sum(got_c * want_c) / np.sum(want_c ** 2)) if spread else float("nan")
    result.max_abs = float(np.abs(got - want).max())
    result.mean_abs = float(np.abs(got - want).mean())
    result.cosine = _cosine(got.ravel(), want.ravel())
    result.worst_index = [int(i) for i in worst]
    result.sample = _sample(got.ravel(), want.ravel(), int(np.ravel_multi_index(worst, error.shape)))
    return errors


def _misses(result: OutputComparison, bounds: Bounds, errors: _Errors, *, logits: bool) -> dict[str, str]:
    """The checks an output fails, by name (empty when it meets them all), each with one phrase."""
    spread, floor, misses = errors.s, result.floor, {}
    worst = tuple(result.worst_index or ())
    if float(errors.excess()[worst]) > bounds.max_error * spread:
        misses["max error"] = (f"max error {abs(float(errors.d[worst])) / spread if spread else float('inf'):.3g} "
                               f"spreads at index {result.worst_index} exceeds {bounds.max_error:g} "
                               f"(+ floor {float(errors.f[worst]):.2g}; spread {spread:.3g})")
    if float(np.sqrt(np.mean(errors.d ** 2))) > floor + bounds.rms_error * spread:
        misses["rms error"] = (f"rms error {result.rms_error:.3g} spreads exceeds {bounds.rms_error:g} "
                               f"(+ floor {floor:.2g}; spread {spread:.3g})")
    allowed = systematic_scale(bounds)
    if spread and errors.dof >= MIN_SCALE_DOF:
        _, noise = _slopes(*(a.reshape(-1, 1) for a in (errors.d, errors.f, errors.rc)), dof=errors.dof - 1)
        limit = allowed + float(noise[0])
        if abs(result.scale - 1) > limit:
            misses["scale"] = f"scale {result.scale:.6g} is off 1 by more than {limit:.3g}"
    if result.feature_scale is not None and result.feature_scale > allowed:
        misses["feature scale"] = (f"feature scale: {1 - FEATURE_QUANTILE:.0%} of the {result.shape[-1]} features have "
                                   f"slopes off 1 by {result.feature_scale:.3g} or more beyond their noise, more than "
                                   f"{allowed:.3g} (worst: feature {result.worst_feature})")
    for kind, off, which in (("class", result.class_scale, result.worst_class),
                             ("row", result.row_scale, result.worst_row)):
        if off is not None and off > min(bounds.scale_error, SLICE_CAP):
            misses[f"{kind} scale"] = (f"{kind} scale: {kind} {which}'s slope is off 1 by {off:.3g} beyond the noise, "
                                       f"more than {min(bounds.scale_error, SLICE_CAP):g}")
    if logits and bounds.min_top1 is not None and result.top1 is not None:
        agreement = result.top1 + (result.top1_near_ties or 0.0)
        if agreement < bounds.min_top1:
            misses["top-1"] = (f"top-1 agreement {result.top1:.3f} ({agreement:.3f} counting the flips its noise "
                               f"explains) < {bounds.min_top1:g}")
    return misses


def systematic_scale(bounds: Bounds) -> float:
    """The slope deviation an output may carry beyond its noise: ``scale_error``, at most
    :data:`SCALE_CAP` (a temperature change of 30% is a regression at every precision)."""
    return min(bounds.scale_error, SCALE_CAP)


def _slopes(d: np.ndarray, f: np.ndarray, rc: np.ndarray, *, dof: int,
            noise: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``(elements, columns)`` arrays (``rc`` centred, no column constant): the slope's
    offset from 1, ``sum(d rc) / sum(rc^2)``, and how far noise alone moves it: the floor's
    worst-case tilt ``sum(f |rc|) / sum(rc^2)`` plus :data:`SLOPE_Z` standard errors
    ``sqrt(sum(noise^2 rc^2)) / sum(rc^2)``, from ``noise`` per element (a number, or one per
    element: ``(elements, 1)``) or else from the residual ``d - off rc`` with ``dof`` degrees of freedom."""
    squares = np.sum(rc ** 2, axis=0)
    off = np.sum(d * rc, axis=0) / squares
    if noise is None:
        noise = np.sqrt(np.sum((d - off * rc) ** 2, axis=0) / dof)
    spread = np.sqrt(np.sum(np.broadcast_to(np.square(noise), rc.shape) * rc ** 2, axis=0))
    return off, (np.sum(f * np.abs(rc), axis=0) + SLOPE_Z * spread) / squares


def _slice_scales(result: OutputComparison, errors: _Errors, bounds: Bounds, noise: float | None) -> None:
    """Fill the slopes of the output's slices, each against its noise (:func:`_slice_excess`).

    Logits: each class over the rows and each row over the classes (``class_scale``/``row_scale``,
    the worst of them: every class and every row is an answer), never with a slice's own residual
    (a class swapped for another would excuse itself): each row over the classes with the case's
    ``noise``, each class over the rows with every row's own noise (:func:`_noise`; rows are
    separate passes through the model, and one row's fp32 rounding can be 80 times another's).
    Other outputs of two axes or more: each feature of the last axis (``feature_scale``, the
    :data:`FEATURE_QUANTILE` quantile: a few dead or odd features do not decide), each with its
    own residual (features differ in size, and so does their noise).

    Errors in units of one global spread are blind to a slice that is small beside the others
    (trained transformers have a few features at 60x; one class among 1000); its own slope is not.
    """
    last = errors.rc.shape[-1]
    d, f, rc = (a.reshape(-1, last) for a in (errors.d, errors.f, errors.rc))
    if noise is None:
        excess = _slice_excess(d, f, rc + errors.level)
        if excess is not None:
            result.feature_scale = float(np.quantile(excess, FEATURE_QUANTILE))
            result.worst_feature = int(np.argmax(excess))
        return
    by_class = _slice_excess(d, f, rc, noise=_noise(errors, bounds, by_row=True))  # rows centred: level 0
    for kind, excess in (("class", by_class), ("row", _slice_excess(d.T, f.T, rc.T, noise=noise))):
        if excess is not None:
            setattr(result, f"{kind}_scale", float(excess.max()))
            setattr(result, f"worst_{kind}", int(np.argmax(excess)))


def _slice_excess(d: np.ndarray, f: np.ndarray, r: np.ndarray, *,
                  noise: float | np.ndarray | None = None) -> np.ndarray | None:
    """Per column of ``(elements, slices)`` arrays (``r`` the reference compared), each centred by
    itself: how far its slope is off 1 beyond its noise (:func:`_slopes`; with ``noise`` None, its
    own residual's). 0 for a column that varies by less than :data:`MIN_SLICE_VARIATION` of its
    RMS value or whose spread is below :data:`MIN_SLICE_SPREAD` of the median column's: its
    information is its level, or it is small beside the others, and the global checks judge it
    (a random DETR's boxes are 0.5 +- 5e-5; one of its classes varies over the queries by 0.017
    of the logits' spread; quantization noise tilts such a column's slope at will). None with one
    column or fewer than :data:`MIN_FEATURE_ELEMENTS` rows."""
    elements, slices = r.shape
    if slices < 2 or elements < MIN_FEATURE_ELEMENTS:
        return None
    magnitude = np.sqrt(np.mean(r ** 2, axis=0))
    d, rc = d - d.mean(axis=0), r - r.mean(axis=0)
    spread = np.sqrt(np.mean(rc ** 2, axis=0))
    live = (spread > MIN_SLICE_VARIATION * magnitude) & (spread >= MIN_SLICE_SPREAD * np.median(spread))
    off, allowance = _slopes(d[:, live], f[:, live], rc[:, live], dof=elements - 2, noise=noise)
    excess = np.zeros(slices)
    excess[live] = np.maximum(np.abs(off) - allowance, 0.0)
    return excess


def _noise(errors: _Errors, bounds: Bounds, *, by_row: bool = False) -> float | np.ndarray:
    """The per-element noise of this case (output units): a robust estimate (1.4826 x median |d|,
    so a few planted elements do not inflate it) combined with the floor, capped at what the
    bounds allow (``floor + rms_error x spread``). ``by_row``: each row's own over its classes,
    as ``(rows, 1)``; the case's when rows have fewer than :data:`MIN_FEATURE_ELEMENTS` classes (a
    median over so few is no estimate: two swapped classes of three would set it)."""
    last = errors.d.shape[-1]
    per_row = by_row and last >= MIN_FEATURE_ELEMENTS
    d, f = (a.reshape(-1, last) if per_row else a.reshape(1, -1) for a in (errors.d, errors.f))
    floor = np.sqrt(np.mean(f ** 2, axis=1, keepdims=True))
    robust = 1.4826 * np.median(np.abs(d), axis=1, keepdims=True)
    noise = np.minimum(np.hypot(robust, floor), floor + bounds.rms_error * errors.s)
    return noise if per_row else float(noise[0, 0])


def explained_flips(got: np.ndarray, want: np.ndarray, *, noise: float) -> float:
    """Fraction of rows whose top-1 moved in a way the case's measured ``noise`` explains.

    A flip from the reference's argmax ``a`` to the target's ``b`` is *explainable* when
    ``want[a] - want[b] <= FLIP_Z * sqrt(2) * noise`` (independent noise of that size closes the gap
    with a chance above ~1e-5). Noise flips a row with probability
    ``p = min(1, sum_c Phi(-(want[a] - want[c]) / (sqrt(2) noise)))``; of the explainable flips at
    most ``ceil(E + FLIP_Z sqrt(V))`` are counted (``E = sum p``, ``V = sum p (1 - p)``), the most that
    noise of that size flips, so a systematic swap of two classes in every row is no near-tie.
    """
    classes = want.shape[-1]
    got2, want2 = got.reshape(-1, classes), want.reshape(-1, classes)
    rows = np.arange(len(want2))
    ours, theirs = got2.argmax(axis=1), want2.argmax(axis=1)
    flips = ours != theirs
    if not flips.any() or noise <= 0:
        return 0.0
    gaps = want2[rows, theirs][:, None] - want2
    width = np.sqrt(2) * noise
    explainable = int((flips & (gaps[rows, ours] <= FLIP_Z * width)).sum())
    chance = ndtr(-gaps / width)
    chance[rows, theirs] = 0.0
    p = np.minimum(chance.sum(axis=1), 1.0)
    most = int(np.ceil(p.sum() + FLIP_Z * np.sqrt(np.sum(p * (1 - p)))))
    return min(explainable, most) / len(want2)


def _sample(got: np.ndarray, want: np.ndarray, worst: int) -> OutputSample:
    """Evenly spaced elements of the flattened output plus the worst one."""
    picked = np.unique(np.append(np.linspace(0, got.size - 1, min(got.size, SAMPLE_SIZE - 1)).astype(np.int64), worst))
    return OutputSample(reference=want[picked], target=got[picked], size=got.size)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; two all-zero vectors count as identical (1.0)."""
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(np.clip(a @ b / norms, -1.0, 1.0))


def _topk_agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    classes = want.shape[-1]
    got2, want2 = got.reshape(-1, classes), want.reshape(-1, classes)
    want_top = want2.argmax(axis=1)
    top1 = float((got2.argmax(axis=1) == want_top).mean())
    k = min(TOP_K, classes)
    got_top5 = np.argpartition(-got2, k - 1, axis=1)[:, :k]
    top5 = float((got_top5 == want_top[:, None]).any(axis=1).mean())
    return top1, top5
