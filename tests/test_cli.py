"""The command line: each command on a real artifact, and one clear error line per user mistake."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import edgeexport
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult
from edgeexport.exporter import targets

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_models_tasks_and_targets() -> None:
    code, out, _ = invoke("list")
    assert code == 0
    assert "question-answering" in out and "mask2former" in out
    assert "onnx" in out and "onnxruntime" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 6}
    assert "int8-weights" in rows["onnx"] and rows["onnx"].count(" yes ") == 2  # converts and runs here
    # This machine has no tensorrt package: the plan converts, only its ONNX runs (on onnxruntime).
    assert "ONNX inside only" in rows["tensorrt"]


def test_convert_prints_parity_table_and_writes_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without -o a zoo model's folder, and the wrote line, say its preset and that its weights are random; the
    last line is the verdict naming the folder."""
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke("convert", "vit")
    assert code == 0, err
    assert "parity: onnx (fp32) on onnxruntime vs PyTorch" in out
    assert out.count("PASS") == 4  # 2 golden + 2 fresh cases, one output each
    folder = "vit-image-classification-onnx-fp32-tiny-random"
    assert (tmp_path / folder / "manifest.json").is_file()
    lines = err.strip().splitlines()
    assert lines[0] == f"wrote {folder} (onnx, fp32, exporter torch.onnx/dynamo; tiny preset, random weights)"
    assert lines[-1].startswith(f"PASS: 4 cases x 1 output of {folder} within bounds (onnx fp32 on onnxruntime); "
                                "task agreement (image-classification, 36 held-out photographs): agreement 100.0%")
    code, out, _ = invoke("inspect", folder)
    assert code == 0 and "vit (image-classification, tiny preset, random weights)" in out


def test_a_typo_is_refused_before_torch_is_imported(
        tmp_path: Path, cli_without_torch: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Where importing torch fails, the names, known broken combinations and the output folder are still checked:
    they come first."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases = {("gtp2",): "error: unknown model 'gtp2'; choose one of: gpt2, bert, bart, t5, vit, convnext, detr, "
                        "mask2former, glpn, wav2vec2 (or pass a save_pretrained folder or a hub id like org/name)",
             ("bert", "--preset", "huge"): "error: unknown preset 'huge'; choose one of: tiny, full",
             ("bert", "--task", "causal-lm"): "error: model 'bert' does not support task 'causal-lm'; its tasks: "
                                              "sequence-classification, token-classification, question-answering",
             ("bert", "-o", str(tmp_path / "taken")): f"error: output folder '{tmp_path / 'taken'}' is not empty; "
                                                      "choose another -o or pass --force to replace it",
             # A combination known to be broken is refused from its names, not after building the model.
             ("gpt2", "--task", "causal-lm-with-past", "--precision", "int8"):
                 "error: --precision int8 breaks the decode steps of 'gpt2' (a decoder with a cache: activation ranges "
                 "are calibrated on the first step only); use --precision int8-weights"}
    for args, expected in cases.items():
        result = cli_without_torch("convert", *args)
        assert result.returncode == 2 and result.stderr.strip() == expected, result.stderr
    # The planted failure: a valid request gets as far as needing torch, and says so.
    result = cli_without_torch("convert", "bert", "-o", str(tmp_path / "new"))
    assert result.returncode == 2 and result.stderr.startswith("error: target 'onnx' needs torch"), result.stderr


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"edgeexport {edgeexport.__version__}\n"


@pytest.mark.parametrize("command", ["convert", "tune", "inspect", "generate", "predict", "validate", "bench"])
def test_help_reads_as_click_help_at_80_columns(command: str) -> None:
    """Usage names arguments in capitals, flags carry no type, values click's type names, no flag is cut short."""
    result = runner.invoke(app, [command, "--help"], prog_name="edgeexport", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    usage = next(line.strip() for line in lines if line.strip().startswith("Usage:"))
    assert usage in (f"Usage: edgeexport {command} [OPTIONS] MODEL", f"Usage: edgeexport {command} [OPTIONS] SOURCE",
                     f"Usage: edgeexport {command} [OPTIONS] ARTIFACT")
    assert max(map(len, lines)) <= 80 and "…" not in result.stdout
    assert "<" not in result.stdout.replace("<=", "")  # no <bool>, <str>, <path> labels
    rows = {line.split()[1]: line.split()[2:] for line in lines if line.startswith("│ --")}
    assert rows["--help"][0] == "Show" and rows["--json"][0] == "Print"  # flags have no type; every command --json
    assert rows.get("--threads", ["INTEGER"])[0] == "INTEGER"
    if command in ("convert", "tune"):
        assert rows["--target"][0] == "TEXT"
        assert f"Target format: {', '.join(targets())}" in " ".join(line.strip("│ ") for line in lines)


def test_convert_fp16_keeps_fp32_io(tmp_path: Path) -> None:
    code, out, err = invoke("convert", "convnext", "--precision", "fp16", "-o", str(tmp_path / "c"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and report["precision"] == "fp16"
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["inputs"][0]["dtype"] == "float32" and manifest["outputs"][0]["dtype"] == "float32"
    assert "float16(keep_io_types)" in manifest["exporter"]["passes"]


def test_validate_json_and_exit_codes(bert_artifact: ConversionResult) -> None:
    code, out, _ = invoke("validate", str(bert_artifact.artifact), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["passed"] and [c["case"] for c in report["cases"]] == ["example", "alternate"]
    code, out, err = invoke("validate", str(bert_artifact.artifact), "--atol", "0", "--rounding", "0", "--max-error", "0",
                            "--rms-error", "0")
    assert code == 1
    assert "parity FAILED" in err


def test_validate_with_reference_reruns_pytorch_on_fresh_inputs(bert_artifact: ConversionResult) -> None:
    code, out, _ = invoke("validate", str(bert_artifact.artifact), "--reference", "--json")
    assert code == 0
    assert [c["source"] for c in json.loads(out)["cases"]] == ["golden", "golden", "reference", "reference"]


def test_bench_reports_both_backends(bert_artifact: ConversionResult) -> None:
    code, out, _ = invoke("bench", str(bert_artifact.artifact), "--reference", "--iterations", "3", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["label"] for r in rows] == ["pytorch eager", "onnx (onnxruntime, fp32)"]
    assert all(0 < r["p10_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)


def test_inspect_shows_ops_and_parameters(bert_artifact: ConversionResult) -> None:
    code, out, _ = invoke("inspect", str(bert_artifact.artifact), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ops"]["MatMul"] > 0 and data["ops"]["com.microsoft.MultiHeadAttention"] == 2  # contrib ops by domain
    assert data["parameters"] > 30_000
    code, out, _ = invoke("inspect", str(bert_artifact.artifact))
    assert code == 0 and "BertForSequenceClassification" not in out and "sequence-classification" in out


def test_inspect_preflight_errors_exit_1(bert_artifact: ConversionResult) -> None:
    """The fused BERT's onnxruntime contrib ops have no TensorRT importer: a CI script sees exit 1."""
    for extra in ((), ("--json",)):
        code, out, err = invoke("inspect", str(bert_artifact.artifact), "--preflight", "tensorrt", *extra)
        assert code == 1 and "SkipLayerNormalization" in out
        assert err.strip() == (f"preflight FAILED: {bert_artifact.artifact}: TensorRT 10.1 preflight: 54 nodes, 6 "
                               "errors, 0 warnings")


def test_validate_runs_without_torch(bert_artifact: ConversionResult,
                                     cli_without_torch: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """The device side (validate) must not import torch."""
    result = cli_without_torch("validate", str(bert_artifact.artifact))
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout


README_COMMAND = re.compile(r"(?<![\w/-])edgeexport ([a-z]+)((?: +(?:[^\s#|&`'\"]+|\"[^\"]*\"))*)")


def readme_options() -> dict[str, set[str]]:
    """Every ``--option`` and ``-o``-style flag the README gives each command, from its command lines."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    found: dict[str, set[str]] = {}
    for command, rest in README_COMMAND.findall(text):
        found.setdefault(command, set()).update(re.findall(r"(?<!\S)(--?[a-z][a-z0-9-]*)", rest))
    return found


def help_options(command: str) -> set[str]:
    result = runner.invoke(app, [command, "--help"], prog_name="edgeexport", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", result.stdout))


def test_every_option_the_readme_gives_a_command_is_in_its_help() -> None:
    """README and --help agree: a flag the README shows for a command that its help lacks fails here (planted: a
    README line with a flag no command has is caught by the same check)."""
    commands = set(typer.main.get_command(app).commands)
    options = {command: flags for command, flags in readme_options().items() if command in commands}
    assert {"convert", "validate", "predict", "generate", "matrix", "tune", "inspect", "sign"} <= set(options)
    assert sum(map(len, options.values())) >= 30
    missing = {command: sorted(flags - help_options(command)) for command, flags in options.items()
               if flags - help_options(command)}
    assert missing == {}
    planted = README_COMMAND.findall("edgeexport validate qa --fail-on regression --no-such-flag")
    assert planted and "--no-such-flag" not in help_options(planted[0][0])
