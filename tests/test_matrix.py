"""The support matrix: failures recorded not raised, resumable, parallel, and the README table generated from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import edgeexport.conversion
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult
from edgeexport.errors import UsageError
from edgeexport.matrix import Combination, Matrix, markdown, plan, run_combination, run_matrix
from edgeexport.matrix_readme import END, START, load_matrix, main, readme_with_matrix

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.fixture()
def fake_convert(bert_artifact: ConversionResult, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``convert`` returns the converted BERT for ``bert`` and raises a two-line error for anything else."""
    calls: list[str] = []

    def convert(model: str, **_options: Any) -> ConversionResult:
        calls.append(model)
        if model == "bert":
            return bert_artifact
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(edgeexport.conversion, "convert", convert)
    return calls


def test_matrix_records_failures_and_resumes(fake_convert: list[str], tmp_path: Path) -> None:
    """A combination that erred has no verdict: the run exits 1 naming it, and the next run tries it again."""
    result = runner.invoke(app, ["matrix", "--models", "bert,vit", "--targets", "onnx", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == ("matrix FAILED: vit-image-classification-tiny-onnx-fp32 erred "
                                                      "(RuntimeError: exporter exploded second line)")
    assert fake_convert == ["bert", "vit"]
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert data["schema"] == "edgeexport.matrix.v2"
    cells = {c["model"]: c for c in data["cells"]}
    assert cells["bert"]["status"] == "passed" and cells["bert"]["exporter"] == "torch.onnx/dynamo"
    assert cells["vit"]["status"] == "error" and cells["vit"]["error"] == "RuntimeError: exporter exploded second line"
    saved = json.loads((tmp_path / "results" / "bert-sequence-classification-tiny-onnx-fp32.json").read_text())
    assert saved["report"]["schema"] == "edgeexport.report.v2" and saved["report"]["passed"]
    assert "| bert | sequence-classification | ✅ passes |" in (tmp_path / "matrix.md").read_text()
    assert "**onnx** (ran on onnxruntime):" in (tmp_path / "matrix.md").read_text()
    assert cells["bert"]["runtime"] == "onnxruntime" and 0 < cells["bert"]["rms_error"] < 1e-4
    assert "exporter exploded" in (tmp_path / "matrix.html").read_text()
    assert "error [1]" in result.stdout

    again = runner.invoke(app, ["matrix", "--models", "bert,vit", "--targets", "onnx", "-o", str(tmp_path), "--strict"])
    assert fake_convert == ["bert", "vit", "vit"]  # the verdict is kept, the error runs again
    assert again.exit_code == 1 and "matrix FAILED: vit-image-classification-tiny-onnx-fp32" in again.stderr


def test_an_erred_combination_passes_once_its_cause_is_fixed(fake_convert: list[str], bert_artifact: ConversionResult,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As after installing a missing extra: the re-run replaces the stale error, and exits 0."""
    assert runner.invoke(app, ["matrix", "--models", "vit", "--targets", "onnx", "-o", str(tmp_path)]).exit_code == 1
    monkeypatch.setattr(edgeexport.conversion, "convert", lambda model, **_options: bert_artifact)
    result = runner.invoke(app, ["matrix", "--models", "vit", "--targets", "onnx", "-o", str(tmp_path), "--strict"])
    assert result.exit_code == 0, result.stderr
    assert [c["status"] for c in json.loads((tmp_path / "matrix.json").read_text())["cells"]] == ["passed"]


def test_a_named_target_without_its_extra_is_refused_before_any_work(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeexport.exporters.onnx import EXPORTER

    monkeypatch.setattr(type(EXPORTER), "requires", ("onnx", "edgeexport_missing_backend"))
    result = runner.invoke(app, ["matrix", "--models", "bert", "--targets", "onnx", "-o", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: target 'onnx' needs edgeexport_missing_backend; install it with: "
                                     "pip install 'edgeexport[export]'")
    assert not (tmp_path / "m").exists()


def test_expect_runs_the_committed_cells_and_fails_on_drift(fake_convert: list[str], tmp_path: Path) -> None:
    """Planted drift: the committed file says vit passes, the run errors; bert's claim holds."""
    committed = tmp_path / "committed.json"
    cells = [{"model": m, "task": "sequence-classification" if m == "bert" else "image-classification",
              "target": "onnx", "precision": "fp32", "preset": "tiny", "status": "passed"} for m in ("bert", "vit")]
    committed.write_text(json.dumps({"schema": "edgeexport.matrix.v2", "cells": cells}))
    result = runner.invoke(app, ["matrix", "--expect", str(committed), "-o", str(tmp_path / "out")])
    assert fake_convert == ["bert", "vit"] and result.exit_code == 1
    assert (f"matrix against {committed} FAILED: vit-image-classification-tiny-onnx-fp32: the matrix says passes, "
            "this run error (RuntimeError: exporter exploded second line)") in " ".join(result.stderr.split())
    assert "bert-sequence" not in result.stderr.split("FAILED")[1]
    both = runner.invoke(app, ["matrix", "--expect", str(committed), "--models", "bert"])
    assert both.exit_code == 2 and "--expect runs the combinations of its matrix" in both.stderr


def test_an_exporter_refusal_is_recorded_as_refused_with_its_reason(tmp_path: Path) -> None:
    """A known-broken combination (OpenVINO int8 on a decoder with a cache) is refused, not an error."""
    pytest.importorskip("openvino")
    cell = run_combination(Combination("gpt2", "causal-lm-with-past", "openvino", "int8"))
    assert cell.status == "refused" and cell.error.startswith("--precision int8 breaks the decode steps of 'gpt2'")
    assert "🚫 refused [1]" in markdown(Matrix([cell]))


def test_parallel_jobs_record_errors_from_worker_processes(tmp_path: Path) -> None:
    """Unknown targets fail inside the workers before torch or any backend is imported (cheap)."""
    combinations = [Combination("vit", "image-classification", target, "fp32") for target in ("tflite", "tvm")]
    seen: list[str] = []
    matrix = run_matrix(tmp_path, combinations, jobs=2, progress=lambda done, total, message: seen.append(message))
    assert sorted(c.error.split(";")[0] for c in matrix.cells) == ["unknown target 'tflite'", "unknown target 'tvm'"]
    assert [c.status for c in matrix.cells] == ["error", "error"]
    assert seen[0] == "starting" and len(seen) == 3


def test_plan_checks_names_and_pairs_targets_with_their_precisions() -> None:
    combinations = plan(["bert:question-answering"], ["onnx"], ["fp32,fp16"])
    assert [(c.task, c.precision) for c in combinations] == [("question-answering", "fp32"), ("question-answering", "fp16")]
    every = plan(["all"], ["onnx"], ["all"])
    assert len(every) == 16 * 5 and {c.precision for c in every} == {"fp32", "fp16", "int8-weights", "int4-weights", "int8"}
    assert ("gpt2", "causal-lm-with-past") in {(c.model, c.task) for c in every}
    with pytest.raises(UsageError, match="model 'vit' has no task 'ctc'"):
        plan(["vit:ctc"], ["onnx"])
    with pytest.raises(UsageError, match="no chosen target has precision 'bf16'; onnx: fp32, fp16"):
        plan(["vit"], ["onnx"], ["bf16"])


def test_readme_table_is_generated_from_the_committed_matrix() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    matrix = load_matrix(ROOT / "docs" / "matrix.json")
    assert START in readme and END in readme
    assert readme_with_matrix(readme, matrix) == readme, "run: python -m edgeexport.matrix_readme"
    assert main(["--check"]) == 0


def test_readme_generator_replaces_only_the_marked_block() -> None:
    matrix = Matrix.from_dict({"schema": "edgeexport.matrix.v2", "cells": [
        {"model": "vit", "task": "image-classification", "target": "onnx", "precision": "fp32", "preset": "tiny",
         "status": "failed", "failures": ["example/logits: too far"]}]})
    readme = f"intro\n{START}\nold table\n{END}\noutro\n"
    assert readme_with_matrix(readme, matrix) == (
        f"intro\n{START}\n**onnx**:\n\n| model | task | fp32 |\n|---|---|---|\n| vit | image-classification | ❌ fails [1] |\n\n"
        f"1. vit image-classification on onnx fp32: example/logits: too far\n{END}\noutro\n")
    with pytest.raises(UsageError, match="the README has no"):
        readme_with_matrix("no markers", matrix)


def test_readme_generator_names_a_missing_or_broken_matrix_in_one_line(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--matrix", str(tmp_path / "none.json"), "--check"]) == 2
    assert capsys.readouterr().err == (f"error: no matrix file '{tmp_path / 'none.json'}'; run edgeexport matrix "
                                       "-o OUT and pass --matrix OUT/matrix.json\n")
    (tmp_path / "broken.json").write_text("{not json")
    assert main(["--matrix", str(tmp_path / "broken.json"), "--check"]) == 2
    assert capsys.readouterr().err.startswith(f"error: '{tmp_path / 'broken.json'}' is not a matrix JSON (")
