"""Parity metrics: tolerance semantics, NaN/Inf, shapes, top-k agreement, exact output matching."""

from __future__ import annotations

import numpy as np

from edgeexport.artifact import Tolerance
from edgeexport.validation.metrics import compare_output
from edgeexport.validation.parity import compare_outputs


def test_within_atol_plus_rtol_passes_and_beyond_fails() -> None:
    reference = np.array([1.0, 100.0], dtype=np.float32)
    inside = reference + np.array([1.5e-4, 0.1], dtype=np.float32)  # 1e-4 + 1e-3*|ref| allows 1.1e-3 and 0.1001
    assert compare_output("y", inside, reference, atol=1e-4, rtol=1e-3)
    outside = reference + np.array([2e-3, 0.0], dtype=np.float32)
    result = compare_output("y", outside, reference, atol=1e-4, rtol=1e-3)
    assert not result
    assert result.worst_index == [0]
    assert result.reason.startswith("max abs error 0.002 at index [0] exceeds atol 0.0001 + rtol 0.001")


def test_nan_and_inf_fail_naming_the_output() -> None:
    target = np.array([1.0, np.nan, np.inf])
    result = compare_output("logits", target, np.ones(3), atol=1.0, rtol=1.0)
    assert not result and result.reason == "2 NaN/Inf values in the target output"


def test_shape_mismatch_fails() -> None:
    result = compare_output("y", np.zeros((2, 3)), np.zeros((2, 4)), atol=1, rtol=1)
    assert not result and result.reason == "shape [2, 3] differs from the reference's [2, 4]"


def test_top1_and_top5_agreement_and_cosine() -> None:
    reference = np.eye(6, dtype=np.float32)[None]  # 6 positions, argmax = position index
    target = reference.copy()
    target[0, 0] = [-1.0, 1.0, 0.9, 0.8, 0.7, 0.6]  # position 0: class 0 drops to last place
    result = compare_output("logits", target, reference, atol=1e-3, rtol=0, logits=True)
    assert result.top1 == 5 / 6
    assert result.top5 == 5 / 6
    assert 0.0 < result.cosine < 1.0
    assert compare_output("logits", reference, reference, atol=0, rtol=0, logits=True).cosine == 1.0


def test_quantized_top1_forgives_flips_between_near_tied_classes_only() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20, 50))
    reference[:, 0] = 10.0  # class 0 wins clearly on every row...
    reference[:4, 1] = 9.95  # ...except 4 rows where class 1 is within rtol 0.05 of it
    target = reference + rng.normal(0, 0.01, reference.shape)
    target[:4, 1] = 10.2  # the 4 near-ties flip
    tolerance = {"atol": 1e-3, "rtol": 0.05, "min_cosine": 0.9, "min_top1": 1.0}
    result = compare_output("logits", target, reference, logits=True, **tolerance)
    assert result.top1 == 0.8 and result.top1_near_ties == 0.2
    assert result, result.reason
    target[4, 2] = 10.5  # a flip to a class the reference scores far below (about 0 vs 10)
    result = compare_output("logits", target, reference, logits=True, **tolerance)
    assert not result and result.top1 == 0.75 and result.top1_near_ties == 0.2
    assert result.reason.endswith(", and top-1 agreement 0.750 (0.950 counting near-ties) < 1")


def test_outputs_are_matched_by_exact_name() -> None:
    case = compare_outputs("c", "golden", {}, {"logit": np.zeros(1)}, {"logits": np.zeros(1)},
                           tolerance=Tolerance(1e-4, 1e-3))
    assert not case.passed
    assert case.error == "output names differ: target ['logit'], reference ['logits']"


def test_per_output_tolerance_override() -> None:
    tolerance = Tolerance(1e-6, 0, per_output={"boxes": (1e-2, 0)})
    case = compare_outputs("c", "golden", {}, {"boxes": np.array([0.005]), "logits": np.array([0.0])},
                           {"boxes": np.array([0.0]), "logits": np.array([0.0])}, tolerance=tolerance)
    assert case.passed
