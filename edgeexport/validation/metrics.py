"""Per-output parity metrics between a target's outputs and the PyTorch reference.

Errors are measured against the reference output's own spread (docs/parity.md): a common
offset or a small output scale changes nothing, and a target that does not carry the
reference's information (shuffled, unrelated, rescaled, constant) fails whatever its magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from edgeexport.artifact import Bounds

SAMPLE_SIZE = 2048
TOP_K = 5


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
    """Errors of one output; truthy when it passed its :class:`~edgeexport.artifact.Bounds`.

    ``spread`` is the reference's RMS deviation (per row for logits) and ``magnitude`` its RMS
    value (for logits, of the centred rows: the spread); ``max_error`` and ``rms_error`` are the
    largest and the RMS error in spreads; ``floor`` is the error the bounds allow whatever the
    spread (``atol + rounding * magnitude``: what the arithmetic cannot resolve); ``scale`` is the slope of the
    target against the reference (1 when unscaled). ``max_abs``, ``mean_abs`` and ``cosine``
    are the raw error and similarity, for reading. Logits only: ``top1``/``top5`` are the
    fraction of rows whose reference argmax is the target's argmax / in its top 5, and
    ``top1_near_ties`` the fraction whose argmax moved between classes the reference scores
    within the noise the bounds allow (see :func:`compare_output`).
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
    worst_index: list[int] | None = None
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
        result.reason = f"shape {list(target.shape)} differs from the reference's {list(reference.shape)}"
        return result
    got, want = target.astype(np.float64), reference.astype(np.float64)
    bad = ~np.isfinite(got)
    if bad.any():
        result.reason = f"{int(bad.sum())} NaN/Inf values in the target output"
        return result
    if got.size == 0:
        result.passed, result.max_error, result.rms_error, result.max_abs = True, 0.0, 0.0, 0.0
        return result
    rows = logits and want.ndim >= 1 and want.shape[-1] > 1
    deviations = _measure(result, got, want, rows=rows)
    result.floor = bounds.atol + bounds.rounding * result.magnitude
    if rows:
        result.top1, result.top5 = _topk_agreement(got, want)
        result.top1_near_ties = near_tie_fraction(got, want, window=2 * (result.floor + bounds.rms_error * result.spread))
    misses = _misses(result, bounds, deviations, logits=rows)
    result.passed = not misses
    result.reason = "; ".join(misses)
    return result


def _measure(result: OutputComparison, got: np.ndarray, want: np.ndarray, *, rows: bool) -> tuple[float, float]:
    """Fill spread, errors in spreads, slope, raw errors, cosine, worst index and the plot sample;
    return the max and RMS error in the output's units."""
    axis = -1 if rows else None
    got_c = got - got.mean(axis=axis, keepdims=rows)
    want_c = want - want.mean(axis=axis, keepdims=rows)
    error = got_c - want_c if rows else got - want
    spread = float(np.sqrt(np.mean(want_c ** 2)))
    worst = np.unravel_index(int(np.argmax(np.abs(error))), error.shape)
    max_dev, rms_dev = float(np.abs(error).max()), float(np.sqrt(np.mean(error ** 2)))
    result.spread = spread
    # The floor scales with the values compared: a per-row offset of logits is not compared.
    result.magnitude = spread if rows else float(np.sqrt(np.mean(want ** 2)))
    result.max_error = max_dev / spread if spread else (0.0 if max_dev == 0 else float("inf"))
    result.rms_error = rms_dev / spread if spread else (0.0 if rms_dev == 0 else float("inf"))
    result.scale = float(np.sum(got_c * want_c) / np.sum(want_c ** 2)) if spread else float("nan")
    result.max_abs = float(np.abs(got - want).max())
    result.mean_abs = float(np.abs(got - want).mean())
    result.cosine = _cosine(got.ravel(), want.ravel())
    result.worst_index = [int(i) for i in worst]
    result.sample = _sample(got.ravel(), want.ravel(), int(np.ravel_multi_index(worst, error.shape)))
    return max_dev, rms_dev


def _misses(result: OutputComparison, bounds: Bounds, deviations: tuple[float, float], *, logits: bool) -> list[str]:
    """The bounds an output misses (empty when it meets them all), each as one phrase."""
    (max_dev, rms_dev), spread, floor, misses = deviations, result.spread, result.floor, []
    if max_dev > floor + bounds.max_error * spread:
        misses.append(f"max error {result.max_error:.3g} spreads at index {result.worst_index} exceeds "
                      f"{bounds.max_error:g} (+ floor {floor:.2g}; spread {spread:.3g})")
    if rms_dev > floor + bounds.rms_error * spread:
        misses.append(f"rms error {result.rms_error:.3g} spreads exceeds {bounds.rms_error:g} "
                      f"(+ floor {floor:.2g}; spread {spread:.3g})")
    if spread and not abs(result.scale - 1) <= bounds.scale_error + floor / spread:
        misses.append(f"scale {result.scale:.6g} is off 1 by more than {bounds.scale_error + floor / spread:.3g}")
    if logits and bounds.min_top1 is not None and result.top1 is not None:
        agreement = result.top1 + (result.top1_near_ties or 0.0)
        if agreement < bounds.min_top1:
            misses.append(f"top-1 agreement {result.top1:.3f} ({agreement:.3f} counting near-ties) "
                          f"< {bounds.min_top1:g}")
    return misses


def near_tie_fraction(got: np.ndarray, want: np.ndarray, *, window: float) -> float:
    """Fraction of rows whose top-1 moved between classes the reference scores less than ``window``
    apart: ``want[a] - want[b] <= window``, with ``a`` the reference's argmax and ``b`` the target's.

    :func:`compare_output` passes twice the noise its bounds allow per element
    (``2 * (floor + rms_error * spread)``): such a gap closes under allowed noise on two classes,
    so the flip is no evidence of a regression. Random-weight models often have their best
    two logits that close. A flip to a well-separated class still counts.
    """
    classes = want.shape[-1]
    got2, want2 = got.reshape(-1, classes), want.reshape(-1, classes)
    rows = np.arange(len(want2))
    ours, theirs = got2.argmax(axis=1), want2.argmax(axis=1)
    gap = want2[rows, theirs] - want2[rows, ours]
    return float(((ours != theirs) & (gap <= window)).mean())


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
