"""``convert --precision auto`` / ``edgeexport tune``: every candidate converted and checked, the passing ones timed
side by side, the fastest at parity kept with the whole table in its manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeexport.bundle import component_folders
from edgeexport.cli import app
from edgeexport.errors import UnsupportedError
from edgeexport.exporters.onnx import OnnxExporter
from edgeexport.manifest import Tolerance
from edgeexport.pipeline import validate
from edgeexport.tuning import Candidate, TuneOptions, choose, tune

QUICK = TuneOptions(rounds=1, iterations=4)
runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def timed(precision: str, p10: float, p50: float, p90: float, verdict: str = "pass") -> Candidate:
    return Candidate(precision, verdict, p50_ms=p50, p10_ms=p10, p90_ms=p90)


def test_the_fastest_beyond_noise_is_kept() -> None:
    fp32, int8 = timed("fp32", 9, 10, 11), timed("int8", 4, 5, 6)
    assert choose([fp32, int8]) is int8


def test_a_more_precise_candidate_within_the_fastest_ones_noise_is_kept() -> None:
    """int8's p90 (10.5) is above fp16's p50 (10): the timing cannot tell them apart, so fp16 stays."""
    fp32, fp16, int8 = timed("fp32", 18, 20, 22), timed("fp16", 9, 10, 12), timed("int8", 8, 9.5, 10.5)
    assert choose([fp32, fp16, int8]) is fp16


def test_a_failing_candidate_is_never_kept_however_fast() -> None:
    """Planted: the fastest candidate failed parity (a failing one is never timed; here it carries a time anyway)."""
    fp32, int8 = timed("fp32", 9, 10, 11), timed("int8", 1, 2, 3, verdict="fail")
    assert choose([fp32, int8]) is fp32
    assert choose([int8, Candidate("fp16", "refused", "no")]) is None


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """BERT tiny on ONNX with three candidates: fp32 genuine, fp16 refused by the exporter, int8-weights given a
    bound it cannot meet (planted: it must be recorded as a failure and never timed or kept)."""
    folder = tmp_path_factory.mktemp("tune") / "bert-auto"
    patch = pytest.MonkeyPatch()
    impossible = Tolerance(atol=0, rounding=0, max_error=1e-9, rms_error=1e-9, scale_error=1e-9)
    patch.setitem(OnnxExporter.precisions, "int8-weights", impossible)

    def refuse(self: OnnxExporter, model: str, task: str, precision: str) -> None:
        if precision == "fp16":
            raise UnsupportedError("fp16 planted refusal")

    patch.setattr(OnnxExporter, "refuse", refuse)
    try:
        result = tune("bert", options=replace(QUICK, precisions=("fp32", "fp16", "int8-weights")), output_dir=folder)
    finally:
        patch.undo()
    return folder, json.loads((folder / "manifest.json").read_text())


def test_tuning_keeps_the_passing_candidate_and_records_every_one(tuned: tuple[Path, dict]) -> None:
    folder, manifest = tuned
    rows = {c["precision"]: c for c in manifest["tuning"]["candidates"]}
    assert manifest["precision"] == manifest["tuning"]["chosen"] == "fp32"
    assert rows["fp32"]["verdict"] == "pass" and rows["fp32"]["chosen"] and rows["fp32"]["p50_ms"] > 0
    assert rows["fp32"]["p10_ms"] <= rows["fp32"]["p50_ms"] <= rows["fp32"]["p90_ms"]
    assert (rows["fp16"]["verdict"], rows["fp16"]["reason"], rows["fp16"]["p50_ms"]) == (
        "refused", "fp16 planted refusal", None)
    assert rows["int8-weights"]["verdict"] == "fail" and "exceeds" in rows["int8-weights"]["reason"]
    assert rows["int8-weights"]["p50_ms"] is None and not rows["int8-weights"]["chosen"]
    assert manifest["tuning"]["eager"]["p50_ms"] > 0 and manifest["tuning"]["machine"]["cpu"]
    assert validate(folder).passed  # the rewritten manifest's hashes hold
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no candidate left behind


def test_inspect_shows_the_tuning_table(tuned: tuple[Path, dict]) -> None:
    code, out, err = invoke("inspect", str(tuned[0]))
    assert code == 0
    assert "kept: fp32" in out and "refused" in out and "fp16 planted refusal" in out
    assert "PyTorch eager p50" in err


def test_tune_retunes_the_model_an_artifact_came_from(tuned: tuple[Path, dict], tmp_path: Path) -> None:
    code, out, err = invoke("tune", str(tuned[0]), "--target", "openvino", "--precisions", "fp32,int8-weights",
                            "--rounds", "1", "--iterations", "4", "-o", str(tmp_path / "ov"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert manifest["target"] == "openvino" and manifest["model"]["name"] == "bert"
    assert [c["precision"] for c in manifest["tuning"]["candidates"]] == ["fp32", "int8-weights"]
    assert all(c["verdict"] == "pass" and c["p50_ms"] for c in manifest["tuning"]["candidates"])
    assert "PASS:" in err and f"wrote {tmp_path / 'ov'}" in err


def test_no_passing_candidate_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    code, _, err = invoke("convert", "bert", "--precision", "auto", "--atol", "0", "--rounding", "0", "--max-error",
                          "0", "-o", str(tmp_path / "x"))
    assert code == 1
    assert "error: no precision of target 'onnx' passed parity for 'bert'" in err
    assert "fp32 fail" in err and "fp16 fail" in err and "int8-weights fail" in err
    assert list(tmp_path.iterdir()) == []


def test_a_bundle_is_tuned_on_its_decode_step(tmp_path: Path) -> None:
    result = tune("gpt2", task="causal-lm-with-past", options=TuneOptions(precisions=("fp32",), rounds=1,
                                                                            iterations=4), output_dir=tmp_path / "g")
    manifest = result.conversion.manifest
    assert manifest.tuning["chosen"] == "fp32" and manifest.tuning["candidates"][0]["p50_ms"] > 0
    assert validate(tmp_path / "g").passed and component_folders(tmp_path / "g")  # bundle hashes verified


@pytest.mark.parametrize(("args", "message"), [
    (("--target", "coreml"), "error: --precision auto times every candidate on this machine, and coreml artifacts "
                             "run here as: MIL reference interpreter (Core ML needs macOS); tune on the machine that "
                             "runs them, or convert at one precision (edgeexport convert --target coreml --precision "
                             "P, P one of: fp16, fp32, int8, palettize6, palettize4)"),
    (("--precisions", "fp8"), "error: target 'onnx' does not support precision 'fp8'; choose one of: fp32, fp16"),
])
def test_untunable_requests_are_refused_in_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    code, _, err = invoke("tune", "bert", *args, "-o", str(tmp_path / "t"))
    assert code == 2
    assert err.startswith(message) and len(err.strip().splitlines()) == 1
