"""The CI gate: --fail-on any|regression against a crafted baseline report, for parity and latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeexport.cli import app
from edgeexport.conversion import ConversionResult
from edgeexport.errors import UsageError
from edgeexport.manifest import Tolerance
from edgeexport.reporting import SCHEMA, Gate, RunReport
from edgeexport.validation.latency import LatencyStats
from edgeexport.validation.parity import ParityReport, compare_outputs

runner = CliRunner()
TOLERANCE = Tolerance(atol=1e-9, rounding=0, max_error=1.0, rms_error=1e-3, scale_error=1e-3)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def parity(errors: dict[str, float]) -> ParityReport:
    """A report with one case whose outputs are off by the given amounts, in spreads (RMS bound 1e-3)."""
    reference = {name: np.array([-1.0, 1.0, -1.0, 1.0]) for name in errors}  # spread 1
    target = {name: reference[name] + error for name, error in errors.items()}
    report = ParityReport("a", "onnx", "onnxruntime", "fp32", TOLERANCE)
    report.cases.append(compare_outputs("example", "golden", {"batch": 1}, target, reference, tolerance=TOLERANCE))
    return report


def stats(label: str, p50: float) -> LatencyStats:
    return LatencyStats.of(label, 1, [p50] * 10)


def baseline(tmp_path: Path, *, outputs: dict[str, tuple[bool, float]] | None = None,
             latency: dict[str, float] | None = None) -> Path:
    """A crafted ``edgeexport.report.v2`` file: outputs as ``name: (passed, rms_error)``, latency as ``label: p50``."""
    data: dict[str, Any] = {"schema": SCHEMA, "parity": None, "latency": []}
    if outputs is not None:
        data["parity"] = {"cases": [{"case": "example", "passed": all(p for p, _ in outputs.values()), "outputs": [
            {"name": name, "passed": passed, "rms_error": rms} for name, (passed, rms) in outputs.items()]}]}
    data["latency"] = [{"label": label, "p50_ms": p50} for label, p50 in (latency or {}).items()]
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return path


def test_parity_regression_is_measured_in_shares_of_the_rms_bound(tmp_path: Path) -> None:
    gate = Gate.create("regression", baseline(tmp_path, outputs={"a": (True, 1e-4), "b": (True, 1e-4)}))
    checks = gate.checks(parity({"a": 2e-4, "b": 5e-4}), [])  # limit: 1e-4 + 0.25 * 1e-3 = 3.5e-4
    assert [(c.item, bool(c)) for c in checks] == [("example/a", True), ("example/b", False)]
    assert checks[1].limit == pytest.approx(3.5e-4)
    assert gate.failures(parity({"a": 2e-4, "b": 5e-4}), checks) == [
        "regression: example/b: rms error 0.0005 spreads exceeds the baseline's 0.0001 by more than 0.25 x its bound "
        "0.001"]


def test_regression_mode_tolerates_known_failures_any_mode_does_not(tmp_path: Path) -> None:
    known = baseline(tmp_path, outputs={"a": (False, 5e-3)})
    current = parity({"a": 5e-3})
    assert not current
    regression = Gate.create("regression", known)
    assert regression.failures(current, regression.checks(current, [])) == []
    strict = Gate.create("any", known)
    assert strict.failures(current, strict.checks(current, [])) == [
        "example/a: rms error 0.005 spreads exceeds 0.001 (+ floor 1e-09; spread 1)"]


def test_an_output_that_newly_fails_is_a_regression_even_within_the_margin(tmp_path: Path) -> None:
    gate = Gate.create("regression", baseline(tmp_path, outputs={"a": (True, 9e-4)}), parity_margin=10.0)
    current = parity({"a": 1.1e-3})
    [check] = gate.checks(current, [])
    assert not check and check.metric == "status"
    assert check.reason.startswith("example/a fails (rms error 0.0011") and "but passed in the baseline" in check.reason


def test_latency_regression_beyond_the_percentage(tmp_path: Path) -> None:
    gate = Gate.create("regression", baseline(tmp_path, latency={"onnx": 10.0, "pytorch eager": 10.0}),
                       latency_margin_pct=20.0)
    checks = gate.checks(None, [stats("onnx", 11.9), stats("pytorch eager", 12.1), stats("new backend", 99.0)])
    assert [(c.item, bool(c)) for c in checks] == [("onnx", True), ("pytorch eager", False)]
    assert checks[1].reason == "pytorch eager: p50 12.100 ms is more than 20% slower than the baseline's 10.000 ms"


@pytest.mark.parametrize(("args", "message"), [
    (("sometimes", None), "unknown --fail-on 'sometimes'; choose one of: any, regression"),
    (("regression", None), "--fail-on regression needs --baseline FILE.json (a report written with --report FILE.json)"),
])
def test_gate_option_errors(args: tuple[str, None], message: str) -> None:
    with pytest.raises(UsageError) as info:
        Gate.create(*args)
    assert str(info.value) == message


def test_a_negative_margin_names_its_own_flag() -> None:
    """validate has only --parity-margin and bench only --latency-margin: the error names the one given."""
    with pytest.raises(UsageError, match=r"^--latency-margin must be zero or more, not -5$"):
        Gate.create(latency_margin_pct=-5)
    with pytest.raises(UsageError, match=r"^--parity-margin must be zero or more, not -0.5$"):
        Gate.create(parity_margin=-0.5)


def test_baseline_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"passed": True}))
    with pytest.raises(UsageError, match=r"is not an edgeexport report \(schema None, expected 'edgeexport.report.v2'\)"):
        Gate.create("regression", path)


def test_cli_gate_on_parity_regression(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    """The real artifact's errors are ~1e-7 spreads: above a crafted baseline of 0 only when the margin is 0."""
    path = baseline(tmp_path, outputs={"logits": (True, 0.0)})
    code, _, err = invoke("validate", str(bert_artifact.artifact), "--fail-on", "regression", "--baseline", str(path))
    assert code == 0, err
    report = tmp_path / "gate.json"
    code, _, err = invoke("validate", str(bert_artifact.artifact), "--fail-on", "regression", "--baseline", str(path),
                          "--parity-margin", "0", "--report", str(report))
    assert code == 1
    assert "parity FAILED: regression: example/logits: rms error" in err
    lines = err.strip().splitlines()
    assert f"wrote {report}" in lines
    assert lines[-1] == (f"FAIL: 1 regression against {path} (1 case, 1 output compared); 2 cases x 1 output of "
                         f"{bert_artifact.artifact} within bounds (onnx fp32 on onnxruntime)")
    data = json.loads(report.read_text())
    assert not data["passed"] and [c["passed"] for c in data["baseline_checks"]] == [False]


def test_cli_gate_on_latency_regression(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    label = "onnx (onnxruntime, fp32)"
    slow = baseline(tmp_path, latency={label: 1e6})
    code, _, err = invoke("bench", str(bert_artifact.artifact), "--iterations", "3", "--fail-on", "regression",
                          "--baseline", str(slow))
    assert code == 0, err
    fast = baseline(tmp_path, latency={label: 1e-6})
    code, _, err = invoke("bench", str(bert_artifact.artifact), "--iterations", "3", "--baseline", str(fast))
    assert code == 1
    assert f"latency FAILED: regression: {label}: p50" in err and "more than 10% slower than the baseline's 0.000 ms" in err


def test_the_verdict_follows_the_gate(tmp_path: Path) -> None:
    """A known failure passes a regression gate and the verdict says why; the default gate fails it."""
    current = parity({"a": 0.5})
    path = baseline(tmp_path, outputs={"a": (False, 0.5)})
    for gate, expected in ((Gate.create("regression", path), f"PASS: no regression against {path} (1 case, 1 output "
                                                             "compared); 1 of 1 case x 1 output of a out of bounds "
                                                             "(onnx fp32 on onnxruntime)"),
                           (Gate(), "FAIL: 1 of 1 case x 1 output of a out of bounds (onnx fp32 on onnxruntime)")):
        checks = gate.checks(current, [])
        run = RunReport("validate", "a", {}, "onnx", "onnxruntime", "fp32", gate, parity=current, checks=checks,
                        failures=gate.failures(current, checks))
        assert run.verdict() == expected


def test_a_baseline_that_shares_nothing_fails_in_one_line(tmp_path: Path) -> None:
    """A baseline of other outputs (or a bench report) compares nothing: that fails, naming both sides."""
    path = baseline(tmp_path, outputs={"logits": (True, 0.0)})
    current = parity({"a": 0.0})
    gate = Gate.create("regression", path)
    checks = gate.checks(current, [])
    assert gate.failures(current, checks) == [
        f"baseline {path} shares no case or output with this run (baseline cases ['example'], this run's "
        "['example']); pass a report of a validate run of the same model and cases"]
    run = RunReport("validate", "a", {}, "onnx", "onnxruntime", "fp32", gate, parity=current, checks=checks,
                    failures=gate.failures(current, checks))
    assert run.verdict() == (f"FAIL: nothing compared against {path} (1 case, 0 outputs compared); 1 case x 1 output "
                             "of a within bounds (onnx fp32 on onnxruntime)")
    bench = baseline(tmp_path, latency={"onnx": 1.0})
    assert gate.failures(current, Gate.create("regression", bench).checks(current, []))[0].startswith(
        f"baseline {bench} shares no case or output with this run (baseline cases [], this run's ['example'])")
    latency = Gate.create("regression", bench).checks(None, [stats("openvino", 1.0)])
    assert [c.reason for c in latency] == [
        f"baseline {bench} shares no backend with this run (baseline ['onnx'], this run's ['openvino']); pass a report "
        "of a bench run of the same backends"]


def test_a_passing_run_names_its_baseline_and_what_was_compared(tmp_path: Path) -> None:
    path = baseline(tmp_path, outputs={"a": (True, 0.0), "gone": (True, 0.0)})
    current = parity({"a": 0.0, "b": 0.0})
    gate = Gate.create("regression", path)
    checks = gate.checks(current, [])
    run = RunReport("validate", "a", {}, "onnx", "onnxruntime", "fp32", gate, parity=current, checks=checks,
                    failures=gate.failures(current, checks))
    assert run.verdict() == (f"PASS: 1 case x 2 outputs of a within bounds (onnx fp32 on onnxruntime); 0 regressions "
                             f"against {path} (1 case, 1 output compared)")


def test_cli_baseline_of_other_outputs_fails(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    """The issue's case: validate --fail-on regression with a baseline of other outputs exited 0."""
    path = baseline(tmp_path, outputs={"last_hidden_state": (True, 0.0)})
    code, _, err = invoke("validate", str(bert_artifact.artifact), "--fail-on", "regression", "--baseline", str(path))
    assert code == 1
    *failure, last = err.strip().splitlines()
    assert "".join("".join(failure).split()) == "".join((  # one line, wrapped to the terminal's width
        f"parity FAILED: baseline {path} shares no case or output with this run (baseline cases ['example'], this "
        "run's ['alternate', 'example']); pass a report of a validate run of the same model and cases").split())
    assert last == (f"FAIL: nothing compared against {path} (1 case, 0 outputs compared); 2 cases x 1 output of "
                         f"{bert_artifact.artifact} within bounds (onnx fp32 on onnxruntime)")
