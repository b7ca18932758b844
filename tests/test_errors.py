"""The bad-input catalogue: every user mistake gets one exact error line, exit code 2 (1 for parity
failures), no traceback, and nothing written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

import edgeexport
from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.errors import InputSpecError
from edgeexport.exporter import targets
from edgeexport.manifest import OLDEST_SCHEMA_VERSION, SCHEMA_VERSION
from edgeexport.reference import load_reference
from edgeexport.tasks import TASKS

EXPORT_INSTALL = "install it with: pip install 'edgeexport[export]'"


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line(code: int, out: str, err: str, expected: str, *, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0] == expected


# --------------------------------------------------------------------------- convert


@pytest.mark.parametrize(("args", "expected"), [
    (["resnet9000"], "error: unknown model 'resnet9000'; choose one of: gpt2, bert, bart, t5, vit, convnext, detr, "
                     "mask2former, glpn, wav2vec2 (or pass a save_pretrained folder or a hub id like org/name)"),
    (["bert", "--task", "causal-lm"], "error: model 'bert' does not support task 'causal-lm'; its tasks: "
                                      "sequence-classification, token-classification, question-answering"),
    (["bert", "--target", "tflite"], "error: unknown target 'tflite'; choose one of: "
                                     + ", ".join(targets())),
    (["bert", "--precision", "int3"], "error: target 'onnx' does not support precision 'int3'; choose one of: fp32, fp16, int8-weights, int4-weights, int8"),
    (["bert", "--preset", "huge"], "error: unknown preset 'huge'; choose one of: tiny, full"),
    (["./no/such/folder"], "error: model folder './no/such/folder' does not exist; pass a zoo name, a save_pretrained "
                           "folder or a hub id"),
])
def test_bad_convert_arguments(args: list[str], expected: str, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    assert_one_line(*run_cli("convert", *args, "-o", str(out_dir)), expected)
    assert list(tmp_path.iterdir()) == []


def test_unknown_task_name(tmp_path: Path) -> None:
    code, out, err = run_cli("convert", "bert", "--task", "dancing", "-o", str(tmp_path / "o"))
    assert_one_line(code, out, err, "error: unknown task 'dancing'; choose one of: " + ", ".join(TASKS))


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(("args", "expected"), [
    (["convert", "bert", "--jsn"],
     "error: no such option '--jsn' for 'convert' (did you mean '--json'?); see 'edgeexport convert --help'"),
    (["convrt", "bert"], "error: no such command 'convrt' (did you mean 'convert'?); see 'edgeexport --help'"),
    (["convert"], "error: missing argument 'MODEL'; see 'edgeexport convert --help'"),
    (["convert", "bert", "--target"], "error: option '--target' requires an argument; see 'edgeexport convert --help'"),
    # Each flag means one thing: validate measures no latency, bench no parity, predict shows classes.
    (["validate", "qa", "--latency-margin", "5"], "error: no such option '--latency-margin' for 'validate' (did you "
                                                  "mean '--parity-margin'?); see 'edgeexport validate --help'"),
    (["bench", "qa", "--parity-margin", "1"], "error: no such option '--parity-margin' for 'bench' (did you mean "
                                              "'--latency-margin'?); see 'edgeexport bench --help'"),
    (["predict", "qa", "--top-k", "2"],
     "error: no such option '--top-k' for 'predict'; see 'edgeexport predict --help'"),
])
def test_parser_mistakes_are_one_line_with_the_help_to_read(args: list[str], expected: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, args, prog_name="edgeexport")
    assert_one_line(result.exit_code, result.stdout, result.stderr, expected)
    assert result.stdout == ""


def saved_bert(folder: Path) -> Path:
    load_reference("bert").module.model.save_pretrained(folder)
    return folder


def damage_config(folder: Path) -> None:
    (folder / "config.json").write_text("{broken")


def truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def garbage_weights(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 64)


def pickle_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")


def remove_config(folder: Path) -> None:
    (folder / "config.json").unlink()


@pytest.mark.parametrize(("damage", "expected"), [
    (remove_config, "error: folder '{f}' has no config.json; save the model with save_pretrained()"),
    (damage_config, "error: '{f}/config.json' cannot be read as a transformers config: "),
    (truncate_weights, "error: weights in '{f}' cannot be loaded (Error while deserializing header: "),
    (garbage_weights, "error: weights in '{f}' cannot be loaded (Error while deserializing header: "),
    (pickle_weights, "error: folder '{f}' holds only pickled weights (pytorch_model.bin), and loading a pickle can run "
                     "code; convert them to safetensors or pass --allow-pickle if you trust the file"),
])
def test_bad_model_folders(damage: Callable[[Path], None], expected: str, tmp_path: Path) -> None:
    folder = saved_bert(tmp_path / "model")
    damage(folder)
    code, out, err = run_cli("convert", str(folder), "-o", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.strip().startswith(expected.format(f=folder)), err
    assert not (tmp_path / "out").exists()


def test_hub_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli("convert", "nobody/no-such-model", "-o", str(tmp_path / "o"))
    assert_one_line(code, out, err, "error: cannot fetch 'nobody/no-such-model' from the Hugging Face Hub "
                                    "(LocalEntryNotFoundError); check the id and network, or save the model with "
                                    "save_pretrained() and pass the folder")


def test_output_path_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("mine")
    assert_one_line(*run_cli("convert", "bert", "-o", str(path)),
                    f"error: output path '{path}' is a file; choose a folder path with -o")
    assert path.read_text() == "mine"


def test_output_folder_not_empty(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line(*run_cli("convert", "bert", "-o", str(tmp_path)),
                    f"error: output folder '{tmp_path}' is not empty; choose another -o or pass --force to replace it")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_output_folder_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, for whom permission bits do not stop writes: stand in for a read-only folder.
    monkeypatch.setattr("edgeexport.artifact._writable", lambda folder: False)
    assert_one_line(*run_cli("convert", "bert", "-o", str(tmp_path / "out")),
                    f"error: output folder '{tmp_path / 'out'}' is not writable; choose another -o")


def test_missing_backend_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edgeexport.exporters.onnx import EXPORTER

    monkeypatch.setattr(type(EXPORTER), "requires", ("onnx", "edgeexport_missing_backend"))
    assert_one_line(*run_cli("convert", "bert", "-o", str(tmp_path / "o")),
                    f"error: target 'onnx' needs edgeexport_missing_backend; {EXPORT_INSTALL}")


def test_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("onnx_ir.save", no_space)
    assert_one_line(*run_cli("convert", "bert", "-o", str(tmp_path / "out")),
                    f"error: writing '{tmp_path / 'out'}' failed: No space left on device; nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_sigint_during_convert_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"
    # A shell starts background jobs (CI scripts, nohup) with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the default disposition, as a terminal does.
    process = subprocess.Popen([sys.executable, "-m", "edgeexport", "convert", "t5", "-o", str(target)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "convert never started writing"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_the_parity_check_says_the_artifact_was_written(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("edgeexport.conversion.check_parity", interrupted)
    code, _, err = run_cli("convert", "bert", "-o", str(tmp_path / "out"))
    assert code == 130
    assert err.strip().splitlines() == [f"interrupted: '{tmp_path / 'out'}' was written; its parity was not checked"]
    assert Artifact.open(tmp_path / "out").manifest.model["name"] == "bert"


def test_swallowed_ctrl_c_still_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          swallowed_ctrl_c: Callable[[], None]) -> None:
    """Ctrl-C lost inside a finalizer during the parity check: the work finishes, the exit code still tells."""
    from edgeexport.validation.parity import check_parity

    def parity_with_a_lost_interrupt(*args: object) -> object:
        swallowed_ctrl_c()
        return check_parity(*args)

    monkeypatch.setattr("edgeexport.conversion.check_parity", parity_with_a_lost_interrupt)
    code, out, err = run_cli("convert", "bert", "-o", str(tmp_path / "out"))
    assert code == 130 and "PASS" in out
    assert err.strip().splitlines()[-1] == "interrupted: Ctrl-C came as the command finished; its output above is complete"


# --------------------------------------------------------------------------- Python API


class Tiny(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.mark.parametrize(("example", "axes", "expected"), [
    ({"y": torch.ones(2)}, None, r"example input 'y' is not a parameter of Tiny.forward\(x\)"),
    ({"x": [1.0, 2.0]}, None, "example input 'x' is a list; pass a torch.Tensor"),
    ({"x": torch.ones(2)}, {"x": {3: "batch"}}, "dynamic axis 3 of input 'x' is out of range for its rank 1"),
    ({"x": torch.ones(2)}, {"z": {0: "batch"}}, r"dynamic_axes names \['z'\] that are not example inputs \(x\)"),
])
def test_bad_example_inputs(example: dict, axes: dict | None, expected: str, tmp_path: Path) -> None:
    with pytest.raises(InputSpecError, match=expected):
        edgeexport.convert(Tiny(), example, dynamic_axes=axes, output_dir=tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- untrusted artifacts


def edit_manifest(folder: Path, **changes: object) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data.update(changes)
    (folder / "manifest.json").write_text(json.dumps(data))


def rewrite_model(folder: Path, change: Callable[[onnx.ModelProto], None]) -> None:
    model = onnx.load(str(folder / "model.onnx"))
    change(model)
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, Artifact.open(folder).manifest)


def external_data_outside(model: onnx.ModelProto) -> None:
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../etc/passwd")


def absolute_external_data(model: onnx.ModelProto) -> None:
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda f: (f / "manifest.json").unlink(), "error: '{f}' has no manifest.json; it is not an edgeexport artifact"),
    (lambda f: (f / "manifest.json").write_text("{"), "error: manifest.json is not valid JSON ("),
    (lambda f: (f / "golden" / "example_inputs.bin").unlink(),
     "error: artifact file 'golden/example_inputs.bin' is missing; the artifact is incomplete, re-run convert"),
    (lambda f: edit_manifest(f, schema_version=1),
     f"error: manifest schema_version 1 is older than this edgeexport reads ({OLDEST_SCHEMA_VERSION}); "
     "re-run 'edgeexport convert' to rewrite the artifact"),
    (lambda f: edit_manifest(f, schema_version=SCHEMA_VERSION + 1),
     f"error: manifest schema_version {SCHEMA_VERSION + 1} is newer than this edgeexport understands ({SCHEMA_VERSION}); "
     "upgrade edgeexport to read this artifact"),
    (lambda f: edit_manifest(f, outputs=[{"name": "logits", "dtype": "complex", "shape": [1]}]),
     "error: manifest outputs[0].dtype 'complex' is not one of "),
    (lambda f: edit_manifest(f, tolerance={"atol": -1, "rounding": 0, "max_error": 0, "rms_error": 0, "scale_error": 0,
                                           "per_output": {}}),
     "error: manifest field 'tolerance.atol' must be a non-negative number"),
    (lambda f: edit_manifest(f, tolerance={"atol": 0, "rtol": 0, "per_output": {}}),
     "error: manifest tolerance has unknown keys ['rtol']; this edgeexport knows atol, rounding, max_error, rms_error, "
     "scale_error, min_top1"),
    (lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:-10]),
     "error: artifact file 'model.onnx' does not match its sha256 in the manifest; it was modified or corrupted"),
    (lambda f: edit_manifest(f, model_file="../../etc/passwd"),
     "error: artifact path '../../etc/passwd' points outside the artifact folder; refusing to read it"),
    (lambda f: rewrite_model(f, external_data_outside),
     "error: artifact path '../../etc/passwd' points outside the artifact folder; refusing to read it"),
    (lambda f: rewrite_model(f, absolute_external_data),
     "error: artifact path '/etc/passwd' points outside the artifact folder; refusing to read it"),
])
def test_untrusted_artifacts_are_refused(artifact_copy: Path, damage: Callable[[Path], None], expected: str) -> None:
    damage(artifact_copy)
    code, out, err = run_cli("validate", str(artifact_copy))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.strip().startswith(expected.format(f=artifact_copy)), err


def test_nan_output_is_a_parity_failure_naming_the_output(artifact_copy: Path) -> None:
    def poison(model: onnx.ModelProto) -> None:
        weight = next(t for t in model.graph.initializer if t.name.endswith("classifier.weight")
                      or "classifier" in t.name)
        weight.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(weight), np.nan), weight.name))

    rewrite_model(artifact_copy, poison)
    code, out, err = run_cli("validate", str(artifact_copy))
    assert code == 1
    assert "parity FAILED: example/logits: 6 NaN/Inf values in the target output" in err


def test_inspect_locate_without_a_preflight_is_refused(bert_artifact: object) -> None:
    assert_one_line(*run_cli("inspect", str(bert_artifact.artifact), "--locate"),  # type: ignore[attr-defined]
                    "error: --locate names the PyTorch module of each preflight problem; add --preflight tensorrt")


def test_predict_names_the_inputs_the_artifact_takes(bert_artifact: object, tmp_path: Path) -> None:
    """A text model asked for an image is told what it does take (its tokenizer's text), not audio."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    artifact = str(bert_artifact.artifact)  # type: ignore[attr-defined]
    assert_one_line(*run_cli("predict", artifact, "--image", str(tmp_path / "x.png")),
                    "error: the artifact does not take images; pass --text or --inputs FILE.npz")


# --------------------------------------------------------------------------- a device without torch


def test_commands_that_need_torch_name_the_export_extra(bert_artifact: object, tmp_path: Path) -> None:
    """Where only the runtime is installed (torch and transformers fail to import), each command that
    needs them ends with one line naming the extra; the rest of the command line still works."""
    artifact = str(bert_artifact.artifact)  # type: ignore[attr-defined]
    cases = [
        (["convert", "bert", "-o", str(tmp_path / "o")],
         f"error: target 'onnx' needs torch, transformers; {EXPORT_INSTALL}"),
        (["validate", artifact, "--reference"], f"error: --reference needs torch, transformers; {EXPORT_INSTALL}"),
        (["bench", artifact, "--reference"], f"error: --reference needs torch, transformers; {EXPORT_INSTALL}"),
        (["validate", artifact, "--explain"],
         f"error: --explain: divergence localization needs torch, transformers; {EXPORT_INSTALL}"),
        (["inspect", artifact, "--preflight", "tensorrt", "--locate"],
         f"error: locating PyTorch modules needs torch, transformers; {EXPORT_INSTALL}"),
        (["matrix", "-o", str(tmp_path / "m")], f"error: matrix needs torch, transformers; {EXPORT_INSTALL}"),
    ]
    script = ("import json, sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"
              "from typer.testing import CliRunner\nfrom edgeexport.cli import app\n"
              "runs = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[1])]\n"
              "print(json.dumps([[run.exit_code, run.stdout, run.stderr] for run in runs]))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps([args for args, _ in cases])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for (args, expected), (code, out, err) in zip(cases, json.loads(result.stdout)):
        assert_one_line(code, out, err, expected)
    assert list(tmp_path.iterdir()) == []
