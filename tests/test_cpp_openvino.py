"""examples/cpp-openvino: the C++ device check, built against the openvino wheel's CMake config, runs
converted BERT and ViT artifacts and judges every output as docs/parity.md says, with the numbers, the
verdict and the words of edgeexport's own ``compare_output``; planted corruptions fail on the criterion
they break, and each criterion's plant of tests/test_plant_table.py (which only it catches there) fails
on that criterion alone here too."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeexport.artifact import save_golden, save_tensors, sha256_file, write_manifest
from edgeexport.manifest import Bounds, Manifest, TensorSpec, Tolerance
from edgeexport.validation import metrics
from edgeexport.validation.metrics import CRITERION, compare_output
from edgeexport.zoo import FP32_TOLERANCE
from test_metrics import T5_ROW_NOISE  # pytest puts tests/ on sys.path
from test_plant_table import ONLY, PRECISIONS, genuine

openvino = pytest.importorskip("openvino")

EXAMPLE = Path(__file__).parents[1] / "examples" / "cpp-openvino"
# The manifest tolerance of docs/parity.md, written into the test artifacts (convert writes its own).
TOLERANCE = {"atol": 1e-5, "rounding": 1e-6, "max_error": 1e-3, "rms_error": 1e-4, "scale_error": 1e-3, "min_top1": 1.0, "per_output": {}}
Converted = tuple[Path, dict[str, dict[str, np.ndarray]]]  # an artifact and OpenVINO's outputs by case and name


def once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``make(folder)`` once per test run: pytest-xdist's workers share the folder (each would build and convert)."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # this run's folder, above the workers' own
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            done.touch()
    return folder


def build(folder: Path) -> None:
    """Configure and build examples/cpp-openvino into ``folder``; skip where the tools are missing."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler build examples/cpp-openvino (apt-get install cmake g++; .ci/run does)")
    openvino_dir = Path(openvino.__file__).parent / "cmake"
    if not (openvino_dir / "OpenVINOConfig.cmake").is_file():
        pytest.skip(f"this openvino wheel ships no CMake config in {openvino_dir}")
    configure = subprocess.run(["cmake", "-S", str(EXAMPLE), "-B", str(folder), f"-DOpenVINO_DIR={openvino_dir}"],
                               capture_output=True, text=True, check=False)
    if configure.returncode:
        log = configure.stdout + configure.stderr
        missing = re.search(r'provided by "(\w+)"|Could NOT find (\w+)', log)
        if missing:
            pytest.skip(f"{missing.group(1) or missing.group(2)} development files are missing "
                        "(apt-get install nlohmann-json3-dev libssl-dev; .ci/run does)")
        pytest.fail(f"cmake could not configure examples/cpp-openvino:\n{log[-3000:]}")
    compiled = subprocess.run(["cmake", "--build", str(folder), "-j", "2"], capture_output=True, text=True, check=False)
    assert compiled.returncode == 0, (compiled.stdout + compiled.stderr)[-3000:]


@pytest.fixture(scope="session")
def check_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgeexport-check``, built once per test run."""
    return once(tmp_path_factory, "cpp-openvino-build", build) / "edgeexport-check"


def _converted(tmp_path_factory: pytest.TempPathFactory, model: str) -> Converted:
    """An OpenVINO artifact of ``model`` with :data:`TOLERANCE`, and its outputs by case from OpenVINO's Python API."""
    from edgeexport.conversion import convert

    def make(folder: Path) -> None:
        convert(model, target="openvino", output_dir=folder / "artifact", validate=False)
        edit_manifest(folder / "artifact", tolerance=TOLERANCE)

    folder = once(tmp_path_factory, f"cpp-openvino-{model}", make) / "artifact"
    manifest = json.loads((folder / "manifest.json").read_text())
    hint = {"INFERENCE_PRECISION_HINT": manifest["runtime_options"]["inference_precision"]}
    compiled = openvino.Core().compile_model(str(folder / manifest["model_file"]), "CPU", hint)
    targets = {}
    for case in manifest["golden"]:
        results = compiled(golden_tensors(folder, case["name"], "inputs"))
        targets[case["name"]] = {t["name"]: results[compiled.output(t["name"])] for t in case["outputs"]["tensors"]}
    return folder, targets


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return _converted(tmp_path_factory, "bert")


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return _converted(tmp_path_factory, "vit")


def edit_manifest(folder: Path, **changes: Any) -> dict[str, Any]:
    path = folder / "manifest.json"
    data = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(data))
    return data


def golden_tensors(folder: Path, case: str, role: str) -> dict[str, np.ndarray]:
    """A golden case's ``inputs`` or ``outputs``, read by the README's "Artifact layout" alone."""
    index = next(c for c in json.loads((folder / "manifest.json").read_text())["golden"] if c["name"] == case)[role]
    raw = (folder / index["file"]).read_bytes()
    return {t["name"]: np.frombuffer(raw, dtype=np.dtype(t["dtype"]).newbyteorder("<"), count=int(np.prod(t["shape"])),
                                     offset=t["offset"]).reshape(t["shape"]) for t in index["tensors"]}


def add_golden_cases(folder: Path, outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """Golden cases on the example case's inputs with the given reference outputs, indexed and hashed."""
    data = json.loads((folder / "manifest.json").read_text())
    example = data["golden"][0]
    for name, arrays in outputs.items():
        index = save_tensors(folder, f"golden/{name}_outputs.bin", arrays)
        data["golden"].append({"name": name, "axes": example["axes"], "inputs": example["inputs"],
                               "outputs": index.to_dict()})
        data["files"][index.file] = sha256_file(folder / index.file)
    edit_manifest(folder, **data)


def criterion(reference: np.ndarray, target: np.ndarray, *, logits: bool,
              tolerance: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
    """edgeexport's own verdict (validation.metrics): the reported numbers, the program's verdict column
    as Python words it, and the checks that fail by name."""
    bounds = Bounds(**{k: v for k, v in tolerance.items() if k != "per_output"})
    result = compare_output("y", target, reference, bounds, logits=logits)
    numbers = {"max err": result.max_error, "rms err": result.rms_error, "scale": result.scale,
               "top-1": None if result.top1 is None or bounds.min_top1 is None
               else result.top1 + (result.top1_near_ties or 0.0)}
    return numbers, "PASS" if result else f"FAIL {result.reason}", result.failed


def run_check(program: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), str(folder), "--iterations", "5", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def rows(stdout: str) -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """The program's table: (case, output) -> (numbers, verdict)."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["case", "output", "max", "err", "rms", "err", "scale", "top-1", "result"], stdout
    table = {}
    for line in lines[1:]:
        if line.startswith(("PASS:", "FAIL:")):
            break
        case, output, max_err, rms_err, scale, top1, verdict = line.split(maxsplit=6)
        table[case, output] = ({"max err": float(max_err), "rms err": float(rms_err), "scale": float(scale),
                                "top-1": None if top1 == "-" else float(top1)}, verdict)
    return table


def assert_agrees_with_the_reference(result: subprocess.CompletedProcess[str], folder: Path,
                                     targets: dict[str, dict[str, np.ndarray]]) -> dict[str, set[str]]:
    """Every row's numbers within 1e-6 (relative) and its verdict, word for word, :func:`criterion`'s; the
    checks failed by case."""
    manifest = json.loads((folder / "manifest.json").read_text())
    tolerance = manifest["tolerance"]
    table = rows(result.stdout)
    expected_rows = {(case["name"], t["name"]) for case in manifest["golden"] for t in case["outputs"]["tensors"]}
    assert set(table) == expected_rows, result.stdout
    failures = {}
    for (case, output), (numbers, verdict) in table.items():
        own = {**tolerance, **tolerance["per_output"].get(output, {})}
        target = targets[case if case in targets else "example"][output]  # added cases run on the example inputs
        want, want_verdict, want_failed = criterion(golden_tensors(folder, case, "outputs")[output], target,
                                                    logits=output in manifest["logits_outputs"], tolerance=own)
        top1, want_top1 = numbers.pop("top-1"), want.pop("top-1")
        assert numbers == pytest.approx(want, rel=1e-6), (case, output, result.stdout)
        want_top1 = None if want_top1 is None else pytest.approx(want_top1, rel=1e-6)
        assert top1 == want_top1, (case, output, result.stdout)
        assert verdict == want_verdict, (case, output, result.stdout)
        failures[case] = set(want_failed)
    return failures


@pytest.mark.parametrize("model", ["bert", "vit"])
def test_converted_models_pass_on_the_device_check(check_program: Path, model: str,
                                                   request: pytest.FixtureRequest) -> None:
    folder, targets = request.getfixturevalue(model)
    result = run_check(check_program, folder)
    assert result.returncode == 0 and result.stderr == "", result.stdout + result.stderr
    failures = assert_agrees_with_the_reference(result, folder, targets)
    assert failures == {"example": set(), "alternate": set()}
    assert "PASS: 2 outputs of 2 golden cases within tolerance" in result.stdout
    assert re.search(r"^latency of example on CPU \(5 runs after 3 warm-up\): p50 \d+\.\d{3} ms, p90 \d+\.\d{3} ms$",
                     result.stdout, re.MULTILINE), result.stdout


def test_an_encoder_decoders_decoder_compiles_without_snippets_below_f32(check_program: Path,
                                                                       tmp_path: Path) -> None:
    """As the Python runner (CROSS_ATTENTION_SNIPPETS, whose fault tests/test_openvino.py checks): the BART bundle's
    decoder at bf16 compiles without CPU snippets, its encoder and the decoder at f32 with them; all pass."""
    from edgeexport.conversion import convert

    bundle = convert("bart", task="seq2seq-lm-with-past", target="openvino", precision="bf16",
                     output_dir=tmp_path / "bf16", validate=False).artifact
    line = "compiled without CPU snippets: an encoder-decoder's decoder below f32"
    decoder, encoder = run_check(check_program, bundle / "decoder"), run_check(check_program, bundle / "encoder")
    assert decoder.returncode == encoder.returncode == 0, decoder.stdout + encoder.stdout
    assert line in decoder.stdout and line not in encoder.stdout
    edit_manifest(bundle / "decoder", runtime_options={"inference_precision": "f32"})
    f32 = run_check(check_program, bundle / "decoder")
    assert f32.returncode == 0 and line not in f32.stdout, f32.stdout


def _planted(reference: np.ndarray) -> dict[str, np.ndarray]:
    """Corruptions of a logits reference (rows over the last axis), by the criterion each must break."""
    rows_mean = reference.mean(axis=-1, keepdims=True)
    scaled_row, offset_row, flipped = reference.copy(), reference.copy(), reference.copy()
    scaled_row[0] *= 1.5
    offset_row[0] += 3.0  # softmax ignores a per-row offset: logits pass, any other output fails
    for row in flipped:  # each row's best and worst class swapped
        best, worst = row.argmax(), row.argmin()
        row[best], row[worst] = row[worst], row[best]
    spread = np.sqrt(np.mean((reference - rows_mean) ** 2))
    noise = np.random.default_rng(0).standard_normal(reference.shape) * 0.01 * spread
    planted = {"row-scaled": scaled_row, "rescaled": rows_mean + (reference - rows_mean) / 1.02,
               "noisy": reference + noise, "top1-flipped": flipped, "row-offset": offset_row}
    return {name: values.astype(reference.dtype) for name, values in planted.items()}


@pytest.fixture()
def corrupted_bert(bert: Converted, tmp_path: Path) -> Converted:
    """A copy of the BERT artifact with the :func:`_planted` corruptions of its example logits as extra golden cases."""
    folder, targets = bert
    copy = tmp_path / "artifact"
    shutil.copytree(folder, copy)
    planted = _planted(golden_tensors(folder, "example", "outputs")["logits"])
    add_golden_cases(copy, {name: {"logits": values} for name, values in planted.items()})
    return copy, targets


def test_a_corrupted_golden_output_fails_on_the_criterion_it_breaks(check_program: Path,
                                                                    corrupted_bert: Converted) -> None:
    folder, targets = corrupted_bert
    result = run_check(check_program, folder)
    assert result.returncode == 1 and result.stderr == "", result.stdout + result.stderr
    failures = assert_agrees_with_the_reference(result, folder, targets)
    assert failures["example"] == failures["alternate"] == failures["row-offset"] == set()
    assert "max error" in failures["row-scaled"] and "scale" in failures["rescaled"]
    assert "rms error" in failures["noisy"] and "top-1" in failures["top1-flipped"]
    assert re.search(r"^FAIL: 4 of 7 outputs beyond tolerance: row-scaled/logits, rescaled/logits, noisy/logits, "
                     r"top1-flipped/logits$", result.stdout, re.MULTILINE), result.stdout
    assert "latency of example on CPU" in result.stdout


def test_an_offset_fails_an_output_that_is_not_logits(check_program: Path, corrupted_bert: Converted) -> None:
    folder, targets = corrupted_bert
    edit_manifest(folder, logits_outputs=[])
    result = run_check(check_program, folder)
    failures = assert_agrees_with_the_reference(result, folder, targets)
    assert result.returncode == 1 and failures["example"] == set() and "max error" in failures["row-offset"]


def test_per_output_overrides_apply_and_a_rescaled_output_fails_on_scale_alone(check_program: Path,
                                                                              corrupted_bert: Converted) -> None:
    folder, targets = corrupted_bert
    loose = {"max_error": 1.0, "rms_error": 1.0, "min_top1": 0.0}
    edit_manifest(folder, tolerance={**TOLERANCE, "per_output": {"logits": loose}})
    result = run_check(check_program, folder)
    failures = assert_agrees_with_the_reference(result, folder, targets)
    assert result.returncode == 1 and failures["rescaled"] == {"scale"} and "top-1" not in failures["top1-flipped"]


def identity_artifact(folder: Path, outputs: dict[str, tuple[np.ndarray, np.ndarray]], tolerance: Tolerance, *,
                      logits: bool) -> dict[str, dict[str, np.ndarray]]:
    """An OpenVINO artifact of ``y = x * 1`` (float32) whose golden cases feed each ``(target, reference)``'s
    target as ``x`` with its reference as ``y``: the program then judges the target itself. The targets by case."""
    import openvino.opset13 as ops

    shape = next(iter(outputs.values()))[1].shape
    x = ops.parameter(shape, np.float32, name="x")
    y = ops.multiply(x, ops.constant(np.float32(1)))
    x.output(0).set_names({"x"})
    y.output(0).set_names({"y"})
    openvino.save_model(openvino.Model([y], [x], "identity"), str(folder / "model.xml"))
    spec = [TensorSpec(name, "float32", tuple(shape)) for name in ("x", "y")]
    write_manifest(folder, Manifest(
        model={"name": "identity"}, target="openvino", runtime="openvino", precision="fp32", model_file="model.xml",
        exporter={}, inputs=spec[:1], outputs=spec[1:], tolerance=tolerance, logits_outputs=["y"] if logits else [],
        golden=[save_golden(folder, case, {}, {"x": target}, {"y": reference})
                for case, (target, reference) in outputs.items()],
        runtime_options={"inference_precision": "f32"}, criterion=dict(CRITERION)))
    return {case: {"y": target} for case, (target, _) in outputs.items()}


@pytest.mark.parametrize("name", ONLY)
def test_each_criterions_own_plant_fails_on_it_alone(check_program: Path, tmp_path: Path, name: str) -> None:
    """tests/test_plant_table.py's plant that only criterion ``name`` catches, at the precision's own bounds
    (a fixed corruption, not sized from them), in float32: it fails on ``name`` alone and the genuine output
    (the reference plus noise of half the RMS bound) passes, in C++ as in Python. Switching the
    criterion off in check.cpp fails this test."""
    plant, make, logits, precision = ONLY[name]
    reference = make().astype(np.float32).astype(np.float64)
    cases = {"genuine": genuine(reference, precision), "planted": plant(reference)}
    targets = identity_artifact(tmp_path, {case: (target.astype(np.float32), reference.astype(np.float32))
                                           for case, target in cases.items()}, PRECISIONS[precision], logits=logits)
    result = run_check(check_program, tmp_path)
    assert result.returncode == 1 and result.stderr == "", result.stdout + result.stderr
    assert assert_agrees_with_the_reference(result, tmp_path, targets) == {"genuine": set(), "planted": {name}}
    assert "FAIL: 1 of 2 outputs beyond tolerance: planted/y" in result.stdout


def test_each_class_slope_is_judged_with_every_rows_own_noise(check_program: Path, tmp_path: Path) -> None:
    """tests/test_metrics.py's fp32 logits whose rows round differently (the wide T5's measured row noise):
    the genuine output passes and one class with a gain of 1.00002 fails on its class slope alone, in C++
    as in Python. Judging the classes with the case's one noise (the previous rule) fails the genuine one."""
    rng = np.random.default_rng(0)
    reference = (9 * rng.standard_normal((1, 16, 1000))).astype(np.float32).astype(np.float64)
    genuine_target = reference + np.array(T5_ROW_NOISE)[:, None] * rng.standard_normal(reference.shape)
    planted = genuine_target.copy()
    planted[..., 11] = reference[..., 11] * 1.00002
    targets = identity_artifact(tmp_path, {case: (target.astype(np.float32), reference.astype(np.float32))
                                           for case, target in (("genuine", genuine_target), ("planted", planted))},
                                FP32_TOLERANCE, logits=True)
    result = run_check(check_program, tmp_path)
    assert result.returncode == 1 and result.stderr == "", result.stdout + result.stderr
    assert assert_agrees_with_the_reference(result, tmp_path, targets) == {"genuine": set(), "planted": {"class scale"}}


def test_the_criterions_constants_come_from_the_manifest(check_program: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The program judges by the manifest's ``criterion`` (metrics.CRITERION as convert wrote it): with no
    slope allowed beyond the floor's tilt (``scale_cap`` and ``slope_z`` 0), the genuine output of the scale
    plant's artifact fails on its scale, in C++ reading the manifest as in Python with those constants."""
    _, make, logits, precision = ONLY["scale"]
    reference = make().astype(np.float32)
    genuine_target = genuine(reference.astype(np.float64), precision).astype(np.float32)
    targets = identity_artifact(tmp_path, {"genuine": (genuine_target, reference)}, PRECISIONS[precision],
                                logits=logits)
    edit_manifest(tmp_path, criterion={**CRITERION, "scale_cap": 0, "slope_z": 0})
    monkeypatch.setattr(metrics, "SCALE_CAP", 0.0)
    monkeypatch.setattr(metrics, "SLOPE_Z", 0.0)
    result = run_check(check_program, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert assert_agrees_with_the_reference(result, tmp_path, targets) == {"genuine": {"scale"}}


def _flip_golden_byte(folder: Path) -> None:
    path = folder / "golden" / "example_outputs.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    edit_manifest(folder, files={**json.loads((folder / "manifest.json").read_text())["files"],
                                 "golden/example_outputs.bin": sha256_file(path)})


@pytest.mark.parametrize(("damage", "args", "expected"), [
    (lambda f: None, ("--iterations", "0"), "error: --iterations takes a positive int, got '0'"),
    (lambda f: None, ("--device", "FOO"), "error: OpenVINO device 'FOO' is not available here; available: "),
    (lambda f: None, ("--frobnicate",),
     "error: unknown option '--frobnicate'; usage: edgeexport-check ARTIFACT_DIR [--iterations N] [--device NAME]"),
    (lambda f: edit_manifest(f, schema_version=1), (),
     ("error: manifest schema_version 1 is older than this program reads (2); "
      "re-run 'edgeexport convert' to rewrite the artifact")),
    (lambda f: edit_manifest(f, target="onnx"), (),
     "error: '{f}' is a 'onnx' artifact; this program checks OpenVINO ones (edgeexport convert --target openvino)"),
    (lambda f: (f / "model.bin").write_bytes(b"\0"), (),
     "error: artifact file 'model.bin' does not match its sha256 in the manifest; it was modified or corrupted"),
    (_flip_golden_byte, (),
     ("error: golden tensor 'logits' of 'golden/example_outputs.bin' does not match its sha256 in the manifest; "
      "the artifact is corrupt")),
    (lambda f: edit_manifest(f, tolerance={"atol": 1e-5}), (),
     "error: manifest is missing field 'tolerance.rounding'; the artifact is incomplete, re-run convert"),
    (lambda f: (f / "manifest.json").write_text(json.dumps(
        {k: v for k, v in json.loads((f / "manifest.json").read_text()).items() if k != "criterion"})), (),
     "error: manifest is missing field 'criterion'; the artifact is incomplete, re-run convert"),
])
def test_bad_input_is_one_error_line_and_exit_2(check_program: Path, bert: Converted, tmp_path: Path,
                                                damage: Any, args: tuple[str, ...], expected: str) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(bert[0], folder)
    damage(folder)
    result = run_check(check_program, folder, *args)
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(expected.format(f=folder)), result.stderr
