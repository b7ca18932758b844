"""Parity metrics: spread-relative bounds (docs/parity.md), the planted outputs each must fail, NaN/Inf,
shapes, near-ties, exact output matching, and nothing compared failing."""

from __future__ import annotations

import numpy as np
import pytest

from edgeexport.manifest import Bounds, Tolerance
from edgeexport.validation.metrics import compare_output
from edgeexport.validation.parity import ParityReport, compare_outputs

# The looser quantized bounds of this project (OpenVINO int8): the planted outputs must fail even these.
LOOSE = Bounds(atol=1e-4, rounding=0, max_error=2.0, rms_error=0.3, scale_error=0.05, min_top1=0.8)
FP32 = Bounds(atol=1e-6, rounding=0, max_error=1e-3, rms_error=1e-4, scale_error=1e-3)


def offset_logits(seed: int) -> np.ndarray:
    """The issue's case: 16 rows x 50 classes around a common offset of -80."""
    return -80 + np.random.default_rng(seed).standard_normal((16, 50))


def test_errors_are_measured_in_spreads_of_the_reference() -> None:
    reference = np.array([1.0, 3.0, 5.0, 7.0])  # mean 4, spread sqrt(5)
    target = reference + np.array([0.0, 0.0, 0.0, 1e-3])
    result = compare_output("y", target, reference, FP32)
    assert result.spread == pytest.approx(np.sqrt(5))
    assert result.max_error == pytest.approx(1e-3 / np.sqrt(5))
    assert result.rms_error == pytest.approx(5e-4 / np.sqrt(5))
    assert result.worst_index == [3]
    assert not result
    assert result.reason == "rms error 0.000224 spreads exceeds 0.0001 (+ floor 1e-06; spread 2.24)"
    result = compare_output("y", reference + np.array([0.0, 0.0, 0.0, 3e-3]), reference, FP32)
    assert result.reason.startswith("max error 0.00134 spreads at index [3] exceeds 0.001 (+ floor 1e-06; spread 2.24); "
                                    "rms error 0.000671 spreads exceeds 0.0001")
    inside = reference + np.array([0.0, 0.0, 0.0, 1e-4])  # 4.5e-5 spreads max, 2.2e-5 RMS
    assert compare_output("y", inside, reference, FP32)


def test_verdict_is_invariant_to_a_common_offset_and_scale() -> None:
    rng = np.random.default_rng(1)
    reference = rng.standard_normal((4, 10))
    target = reference + rng.normal(0, 3e-5, reference.shape)
    verdicts = set()
    for scale, offset in ((1.0, 0.0), (1e-2, 0.0), (1.0, -80.0), (1e3, 5e3)):
        result = compare_output("y", target * scale + offset, reference * scale + offset, FP32)
        verdicts.add((bool(result), round(result.rms_error, 6)))
    assert len(verdicts) == 1


@pytest.mark.parametrize("logits", [True, False])
@pytest.mark.parametrize("planted", ["unrelated", "shuffled", "scaled 1.1", "constant"])
def test_outputs_without_the_references_information_fail(planted: str, logits: bool) -> None:
    reference = offset_logits(0)
    target = {"unrelated": offset_logits(1), "shuffled": np.random.default_rng(2).permuted(reference, axis=1),
              "scaled 1.1": reference * 1.1, "constant": np.full_like(reference, reference.mean())}[planted]
    result = compare_output("logits", target, reference, LOOSE, logits=logits)
    assert not result, planted
    assert result.reason


def test_scaled_logits_fail_on_scale_even_inside_the_noise_allowance() -> None:
    reference = offset_logits(0)
    centred = reference - reference.mean(axis=-1, keepdims=True)
    result = compare_output("logits", reference + 0.1 * centred, reference, LOOSE, logits=True)  # rms 0.1 < 0.3
    assert not result
    assert result.reason == "scale 1.1 is off 1 by more than 0.0501"


def test_per_row_offset_of_logits_is_allowed_but_of_other_outputs_is_an_error() -> None:
    reference = offset_logits(0)
    shifted = reference + np.arange(16)[:, None]  # softmax of each row unchanged
    assert compare_output("logits", shifted, reference, FP32, logits=True)
    assert not compare_output("boxes", shifted, reference, FP32)


def test_quantization_like_noise_passes_the_loose_bounds() -> None:
    reference = offset_logits(0)
    target = reference + np.random.default_rng(3).normal(0, 0.1, reference.shape)
    result = compare_output("logits", target, reference, LOOSE, logits=True)
    assert result, result.reason


def test_nan_and_inf_fail_naming_the_output() -> None:
    target = np.array([1.0, np.nan, np.inf])
    result = compare_output("logits", target, np.ones(3), LOOSE)
    assert not result and result.reason == "2 NaN/Inf values in the target output"


def test_shape_mismatch_fails() -> None:
    result = compare_output("y", np.zeros((2, 3)), np.zeros((2, 4)), LOOSE)
    assert not result and result.reason == "shape [2, 3] differs from the reference's [2, 4]"


def test_constant_reference_is_judged_by_atol_alone() -> None:
    reference = np.full(5, 3.0)
    assert compare_output("y", reference + 5e-7, reference, FP32)
    result = compare_output("y", reference + 1e-3, reference, FP32)
    assert not result and result.spread == 0.0 and "spread 0" in result.reason


def test_top1_and_top5_agreement() -> None:
    reference = np.eye(6)[None] * 10  # 6 rows, argmax = row index
    target = reference.copy()
    target[0, 0] = [-1.0, 1.0, 0.9, 0.8, 0.7, 0.6]  # row 0: class 0 drops to last place
    result = compare_output("logits", target, reference, LOOSE, logits=True)
    assert result.top1 == 5 / 6 and result.top5 == 5 / 6
    assert not result


def test_top1_forgives_flips_between_near_tied_classes_only() -> None:
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((20, 50))
    reference[:, 0] = 10.0  # class 0 wins clearly on every row...
    reference[:4, 1] = 9.99  # ...except 4 rows where class 1 is within the noise the bounds allow
    bounds = Bounds(atol=1e-4, rounding=0, max_error=1.0, rms_error=0.05, scale_error=0.05, min_top1=1.0)
    target = reference + rng.normal(0, 0.005, reference.shape)
    target[:4, 1] = 10.02  # the 4 near-ties flip
    result = compare_output("logits", target, reference, bounds, logits=True)
    assert result.top1 == 0.8 and result.top1_near_ties == 0.2
    assert result, result.reason
    target[4, 2] = 10.5  # a flip to a class the reference scores far below (about 0 vs 10)
    result = compare_output("logits", target, reference, bounds, logits=True)
    assert not result and result.top1 == 0.75 and result.top1_near_ties == 0.2
    assert result.reason.endswith("top-1 agreement 0.750 (0.950 counting near-ties) < 1")


def test_outputs_are_matched_by_exact_name() -> None:
    case = compare_outputs("c", "golden", {}, {"logit": np.zeros(1)}, {"logits": np.zeros(1)},
                           tolerance=Tolerance(1e-6, 0, 1e-3, 1e-4, 1e-3))
    assert not case.passed
    assert case.error == "output names differ: target ['logit'], reference ['logits']"


def test_nothing_compared_fails_with_its_own_reason() -> None:
    tolerance = Tolerance(1e-6, 0, 1e-3, 1e-4, 1e-3)
    case = compare_outputs("c", "golden", {}, {}, {}, tolerance=tolerance)
    assert not case.passed and case.error == "no outputs to compare; the reference produced none"
    report = ParityReport("a", "onnx", "onnxruntime", "fp32", tolerance)
    assert not report and report.failures() == ["no cases were compared; the artifact has no golden cases"]


def test_per_output_override_replaces_only_its_keys() -> None:
    tolerance = Tolerance(1e-6, 0, 1e-3, 1e-4, 1e-3, per_output={"boxes": {"max_error": 1e-2, "rms_error": 1e-2,
                                                                            "scale_error": 1e-2}})
    assert tolerance.for_output("boxes") == Bounds(1e-6, 0, 1e-2, 1e-2, 1e-2)
    reference = {"boxes": np.array([0.0, 1.0]), "logits": np.array([0.0, 1.0])}
    target = {"boxes": np.array([0.004, 1.0]), "logits": np.array([0.004, 1.0])}
    case = compare_outputs("c", "golden", {}, target, reference, tolerance=tolerance)
    assert [bool(o) for o in case.outputs] == [True, False]
    assert Tolerance.from_dict(tolerance.to_dict()) == tolerance
    assert tolerance.overridden(max_error=5e-2).for_output("boxes").max_error == 5e-2


def test_rounding_floor_covers_what_the_arithmetic_cannot_resolve() -> None:
    """Sigmoid boxes of a random model: values ~0.5 varying by 1e-4. fp16 cannot resolve that
    variation (its rounding at 0.5 is 2.4e-4), so its floor (rounding x RMS magnitude) must allow it;
    fp32's floor must not, and an unrelated output with an offset still fails the fp16 bounds."""
    rng = np.random.default_rng(4)
    reference = 0.5 + 1e-4 * rng.standard_normal((10, 4))
    half = reference.astype(np.float16).astype(np.float64)
    fp16 = Bounds(atol=1e-6, rounding=2e-3, max_error=0.1, rms_error=0.02, scale_error=0.01)
    assert compare_output("boxes", half, reference, fp16)
    assert not compare_output("boxes", half, reference, FP32)
    logits = offset_logits(0)
    assert not compare_output("logits", offset_logits(1), logits, fp16, logits=True)
