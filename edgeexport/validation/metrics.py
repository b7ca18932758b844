"""Per-output parity metrics between a target's outputs and the PyTorch reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class OutputComparison:
    """Errors of one output; truthy when it passed.

    ``passed`` means ``|target - reference| <= atol + rtol * |reference|`` everywhere, same
    shape, and no NaN/Inf in the target. ``top1``/``top5`` (logits only) are the fraction of
    positions whose reference argmax is the target's argmax / within the target's top 5.
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
    worst_index: list[int] | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def compare_output(name: str, target: np.ndarray, reference: np.ndarray, *, atol: float, rtol: float,
                   logits: bool = False) -> OutputComparison:
    """Compare one output; never raises for bad values, it reports them."""
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
    if logits and want.ndim >= 1 and want.shape[-1] > 1:
        result.top1, result.top5 = _topk_agreement(got, want)
    result.passed = bool((excess <= 0).all())
    if not result.passed:
        result.reason = (f"max abs error {result.max_abs:.3g} at index {result.worst_index} exceeds "
                         f"atol {atol:g} + rtol {rtol:g} * |reference|")
    return result


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if norms == 0 and not a.any() and not b.any() else float(a @ b / norms) if norms else 0.0


def _topk_agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    classes = want.shape[-1]
    got2, want2 = got.reshape(-1, classes), want.reshape(-1, classes)
    want_top = want2.argmax(axis=1)
    top1 = float((got2.argmax(axis=1) == want_top).mean())
    k = min(5, classes)
    got_top5 = np.argpartition(-got2, k - 1, axis=1)[:, :k]
    top5 = float((got_top5 == want_top[:, None]).any(axis=1).mean())
    return top1, top5
