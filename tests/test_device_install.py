"""The device install: a venv with ``pip install edgeexport`` (no extra) and the OpenVINO runtime, and no
torch or transformers, runs list, validate, bench, inspect, predict, generate and ``load(path).embed`` on
artifacts made by the full install and copied over, as an embedded team would."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from edgeexport.conversion import convert
from trained import minilm_folder

ROOT = Path(__file__).parents[1]
# What each artifact is, how it is converted, and what the device runs on it.
ARTIFACTS = {
    "classifier-onnx": ("bert", "sequence-classification", "onnx"),
    "classifier-openvino": ("bert", "sequence-classification", "openvino"),
    "qa-onnx": ("bert", "question-answering", "onnx"),
    "image-classifier-onnx": ("vit", "image-classification", "onnx"),
    "decoder-onnx": ("gpt2", "causal-lm-with-past", "onnx"),
    "decoder-openvino": ("gpt2", "causal-lm-with-past", "openvino"),
    "bundle-onnx": ("t5", "seq2seq-lm-with-past", "onnx"),
    "embedder-onnx": ("all-MiniLM-L6-v2", "sentence-embedding", "onnx"),
}
# Sources that are trained checkpoints rather than zoo names (their artifacts carry an evaluation set).
TRAINED = {"all-MiniLM-L6-v2": minilm_folder}
SENTENCES = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
BLOCKED = ("torch", "transformers", "onnxscript", "onnxslim", "nncf")


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device venv: the package without extras, plus the OpenVINO runtime; its bin folder."""
    folder = tmp_path_factory.mktemp("device") / "venv"
    venv.EnvBuilder(with_pip=True).create(folder)
    subprocess.run([folder / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "constraints.txt",
                    str(ROOT), "openvino"], check=True, capture_output=True, timeout=900)
    return folder / "bin"


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts converted by this (full) install, then copied to a folder of their own, as to a device."""
    built, shipped = tmp_path_factory.mktemp("built"), tmp_path_factory.mktemp("shipped")
    for name, (model, task, target) in ARTIFACTS.items():
        source = str(TRAINED[model]()) if model in TRAINED else model
        convert(source, task=task, target=target, output_dir=built / name, validate=False)
        shutil.copytree(built / name, shipped / name)
    return shipped


def run(device: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([device / "edgeexport", *args], capture_output=True, text=True, timeout=600)


def test_the_device_venv_has_no_export_stack(device: Path) -> None:
    script = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))"
    found = json.loads(subprocess.run([device / "python", "-c", script % (BLOCKED,)], capture_output=True, text=True,
                                      check=True).stdout)
    assert found == {m: False for m in BLOCKED}


def test_list_names_the_export_extra(device: Path) -> None:
    result = run(device, "list")
    assert result.returncode == 0, result.stderr
    assert "pip install 'edgeexport[export]'" in result.stdout and "mask2former" in result.stdout


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_validate_inspect_and_bench(device: Path, copied: Path, name: str) -> None:
    folder = str(copied / name)
    result = run(device, "validate", folder, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"]
    result = run(device, "inspect", folder, "--json")
    assert result.returncode == 0, result.stderr
    if name != "bundle-onnx":
        result = run(device, "bench", folder, "--iterations", "2", "--json")
        assert result.returncode == 0, result.stderr
        assert [row["label"].split()[0] for row in json.loads(result.stdout)] == [ARTIFACTS[name][2]]


@pytest.mark.parametrize("name", ["classifier-onnx", "classifier-openvino", "qa-onnx"])
def test_predict(device: Path, copied: Path, name: str) -> None:
    result = run(device, "predict", str(copied / name), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(rows)


def test_predict_an_image_and_the_readme_snippet(device: Path, copied: Path, tmp_path: Path) -> None:
    """``predict --image`` and the README's device snippet decode an image with the device install alone."""
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 90)).save(tmp_path / "photo.jpg")
    result = run(device, "predict", str(copied / "image-classifier-onnx"), "--image", str(tmp_path / "photo.jpg"),
                 "--json")
    assert result.returncode == 0, result.stderr
    assert [len(row) for row in json.loads(result.stdout)] == [5]  # one image, the top 5 labels
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"On a device, the same in Python:\n\n```python\n(.*?)```", readme, re.S).group(1)
    shutil.copytree(copied / "image-classifier-onnx", tmp_path / "vit-artifact")
    result = subprocess.run([device / "python", "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("'label': ") == 3 and result.stdout.count("'score': ") == 3, result.stdout


def test_embed_and_predict_text_match_sentence_transformers(device: Path, copied: Path) -> None:
    """``load(path).embed`` on the device (the artifact's tokenizer, no torch) gives sentence-transformers'
    ``encode`` embeddings to 1e-5, and ``predict --text`` prints their cosine similarities. Planted: the
    same embeddings rounded to fp16 (what an fp16 graph output gives) and mean-pooled over the padding
    too (a pooling that ignores the attention mask) each miss that bound."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = model.encode(SENTENCES)
    assert not _same_embeddings(expected.astype(np.float16).astype(np.float32), expected)
    assert not _same_embeddings(_pooled_over_padding(model, SENTENCES), expected)
    script = ("import json, sys; from edgeexport import load; "
              "print(json.dumps(load(sys.argv[1]).embed(json.loads(sys.argv[2])).tolist()))")
    result = subprocess.run([device / "python", "-c", script, str(copied / "embedder-onnx"), json.dumps(SENTENCES)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    embedded = np.array(json.loads(result.stdout))
    assert _same_embeddings(embedded, expected)
    args = [arg for sentence in SENTENCES for arg in ("--text", sentence)]
    result = run(device, "predict", str(copied / "embedder-onnx"), *args, "--json")
    assert result.returncode == 0, result.stderr
    similarity = np.array(json.loads(result.stdout)["cosine_similarity"])
    assert np.abs(similarity - expected @ expected.T).max() < 1e-5
    assert similarity[0, 1] > 0.5 > similarity[0, 2]  # the two cat sentences, not the markets


def _same_embeddings(got: Any, want: Any) -> bool:
    """The device embedding's bound: sentence-transformers' own values to 1e-5 (fp32 arithmetic in another order)."""
    return bool(got.shape == want.shape and abs(got - want).max() < 1e-5)


def _pooled_over_padding(model: Any, sentences: list[str]) -> Any:
    """The planted pooling bug: the model's token embeddings of the padded batch averaged over every position."""
    import torch

    features = model.tokenize(sentences)
    with torch.no_grad():
        tokens = model[0](features)["token_embeddings"]
    return torch.nn.functional.normalize(tokens.mean(dim=1), dim=-1).numpy()


@pytest.mark.parametrize("name", ["decoder-onnx", "decoder-openvino", "bundle-onnx"])
def test_generate(device: Path, copied: Path, name: str) -> None:
    result = run(device, "generate", str(copied / name), "--prompt-ids", "5,6,7", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stderr.startswith("4 tokens in "), result.stderr  # decoded by the artifact's tokenizer


def test_commands_that_need_torch_say_how_to_get_it(device: Path, copied: Path) -> None:
    result = run(device, "validate", str(copied / "classifier-onnx"), "--reference")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "pip install 'edgeexport[export]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sys.executable not in result.stderr
