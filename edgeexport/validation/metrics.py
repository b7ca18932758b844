"""Per-output parity metrics between a target's outputs and the PyTorch reference."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

SAMPLE_SIZE = 2048


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
    """Errors of one output; truthy when it passed.

    ``passed`` means same shape, no NaN/Inf in the target, and either
    ``|target - reference| <= atol + rtol * |reference|`` everywhere or, where a statistical
    criterion is given (quantized targets), cosine, top-1 and mean error within it (see
    :func:`compare_output`). ``top1``/``top5`` (logits only) are the fraction of positions whose
    reference argmax is the target's argmax / within the target's top 5; ``top1_near_ties`` is
    the fraction whose argmax differs only between classes the reference scores within their
    elementwise tolerance of each other (see :func:`near_tie_fraction`).
    """

    name: str
    shape: list[int]
    passed: bool
    atol: float
    rtol: float
    max_abs: float = float("nan")
    max_rel: float = float("nan")
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
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sample"}
        return json_ready(values)


def json_ready(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with non-finite floats (NaN, inf) as None, which JSON cannot hold."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in values.items()}


def compare_output(name: str, target: np.ndarray, reference: np.ndarray, *, atol: float, rtol: float,
                   logits: bool = False, min_cosine: float | None = None,
                   min_top1: float | None = None) -> OutputComparison:
    """Compare one output; never raises for bad values, it reports them.

    Args:
        name: Output name.
        target: The target's output.
        reference: PyTorch's output.
        atol: Absolute tolerance.
        rtol: Relative tolerance.
        logits: Compute top-1/top-5 agreement over the last axis. Defaults to False.
        min_cosine: If set, an output beyond the elementwise bound still passes when its cosine
            similarity is at least this, its top-1 agreement at least ``min_top1`` (logits
            only) and its mean absolute error at most ``atol + rtol * mean(|reference|)``:
            quantization noise passes, a regression (wrong values, shuffled or rescaled
            logits) does not. Defaults to None (elementwise only).
        min_top1: Least top-1 agreement of logits for the statistical criterion. Defaults to None.
    """
    result = OutputComparison(name=name, shape=list(reference.shape), passed=False, atol=atol, rtol=rtol)
    if target.shape != reference.shape:
        result.reason = f"shape {list(target.shape)} differs from the reference's {list(reference.shape)}"
        return result
    got = target.astype(np.float64)
    want = reference.astype(np.float64)
    bad = ~np.isfinite(got)
    if bad.any():
        result.reason = f"{int(bad.sum())} NaN/Inf values in the target output"
        return result
    if got.size == 0:
        result.passed, result.max_abs, result.max_rel, result.mean_abs = True, 0.0, 0.0, 0.0
        return result
    diff = np.abs(got - want)
    excess = diff - (atol + rtol * np.abs(want))
    worst = np.unravel_index(int(np.argmax(excess)), diff.shape)
    result.max_abs = float(diff.max())
    result.max_rel = float((diff / np.maximum(np.abs(want), 1e-12)).max())
    result.mean_abs = float(diff.mean())
    result.cosine = _cosine(got.ravel(), want.ravel())
    result.worst_index = [int(i) for i in worst]
    result.sample = _sample(got.ravel(), want.ravel(), int(np.ravel_multi_index(worst, diff.shape)))
    if logits and want.ndim >= 1 and want.shape[-1] > 1:
        result.top1, result.top5 = _topk_agreement(got, want)
        result.top1_near_ties = near_tie_fraction(got, want, atol=atol, rtol=rtol)
    result.passed = bool((excess <= 0).all())
    if result.passed:
        return result
    result.reason = (f"max abs error {result.max_abs:.3g} at index {result.worst_index} exceeds "
                     f"atol {atol:g} + rtol {rtol:g} * |reference|")
    if min_cosine is not None:
        misses = _statistical_misses(result, mean_bound=atol + rtol * float(np.abs(want).mean()),
                                     min_cosine=min_cosine, min_top1=min_top1)
        result.passed = not misses
        result.reason = "" if result.passed else f"{result.reason}, and {', '.join(misses)}"
    return result


def _statistical_misses(result: OutputComparison, *, mean_bound: float, min_cosine: float,
                        min_top1: float | None) -> list[str]:
    """The statistical criteria an output misses (empty when it meets them all)."""
    misses = []
    if not result.cosine >= min_cosine:
        misses.append(f"cosine {result.cosine:.4f} < {min_cosine:g}")
    if min_top1 is not None and result.top1 is not None:
        agreement = result.top1 + (result.top1_near_ties or 0.0)
        if agreement < min_top1:
            misses.append(f"top-1 agreement {result.top1:.3f} ({agreement:.3f} counting near-ties) < {min_top1:g}")
    if result.mean_abs > mean_bound:
        misses.append(f"mean abs error {result.mean_abs:.3g} > {mean_bound:.3g}")
    return misses


def near_tie_fraction(got: np.ndarray, want: np.ndarray, *, atol: float, rtol: float) -> float:
    """Fraction of positions whose top-1 differs between two classes the reference scores within
    their elementwise tolerance of each other: ``want[a] - want[b] <= tol(a) + tol(b)``, with ``a``
    the reference's argmax, ``b`` the target's and ``tol(i) = atol + rtol * |want[i]|``.

    Such a flip is what the elementwise tolerance already allows (each score may move by its
    tol), so the quantized-precision top-1 criterion does not count it: on random-weight models
    the best two logits are often nearly tied. A flip between well-separated classes still counts.
    """
    classes = want.shape[-1]
    got2, want2 = got.reshape(-1, classes), want.reshape(-1, classes)
    rows = np.arange(len(want2))
    ours, theirs = got2.argmax(axis=1), want2.argmax(axis=1)
    best, picked = want2[rows, theirs], want2[rows, ours]
    allowed = 2 * atol + rtol * (np.abs(best) + np.abs(picked))
    return float(((ours != theirs) & (best - picked <= allowed)).mean())


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
    k = min(5, classes)
    got_top5 = np.argpartition(-got2, k - 1, axis=1)[:, :k]
    top5 = float((got_top5 == want_top[:, None]).any(axis=1).mean())
    return top1, top5
