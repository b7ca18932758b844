"""Real checkpoints: the trained all-MiniLM-L6-v2 as a sentence-embedding artifact, head-less folders as feature
extraction, no silent random heads, portable manifests (issue: real checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from edgeexport.artifact import sha256_file
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult, convert
from edgeexport.errors import ModelLoadError, UnsupportedError, UsageError
from edgeexport.runner import load
from edgeexport.validation.agreement import CRITERIA
from trained import FOLDER_NAME, minilm_folder

TINY_BERT = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   vocab_size=1000)
SENTENCES = ["The weather is lovely today.", "It is sunny and warm outside.", "The team won the cup final."]


def encoded(folder: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own embeddings of ``texts`` (the library users run today) on the CPU."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> ConversionResult:
    return convert(minilm_folder(), output_dir=tmp_path_factory.mktemp("st") / "minilm-onnx")


def test_a_sentence_transformers_folder_is_a_sentence_embedding_artifact(embedder: ConversionResult) -> None:
    assert embedder.manifest.model["task"] == "sentence-embedding"  # no --task given
    assert embedder.manifest.output_names == ["sentence_embedding"]
    assert embedder.manifest.model["architecture"] == "BertModel (mean pooling, normalize)"
    assert embedder.report is not None and embedder.report.passed, embedder.report.failures()
    agreement = embedder.report.agreement
    assert agreement is not None and agreement.examples == 96
    assert agreement.measures["agreement"] == 1.0 and agreement.measures["min_cosine"] > 0.9999


def test_embeddings_match_sentence_transformers(embedder: ConversionResult) -> None:
    got = load(embedder.artifact).embed(SENTENCES)
    want = encoded(minilm_folder(), SENTENCES)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, want, atol=1e-5)  # fp32: measured 1e-7
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_predict_prints_cosine_similarities(embedder: ConversionResult) -> None:
    result = CliRunner().invoke(app, ["predict", str(embedder.artifact), *[f"--text={t}" for t in SENTENCES]])
    assert result.exit_code == 0, result.output
    want = encoded(minilm_folder(), SENTENCES)
    lines = result.output.splitlines()
    assert lines[:3] == [f"[{i}] embedding of 384 values, norm 1.0000" for i in range(3)]
    assert lines[3] == f"cosine similarity [0] [1]: {float(want[0] @ want[1]):.4f}"
    assert float(want[0] @ want[1]) > float(want[0] @ want[2]) + 0.3  # weather vs weather beats weather vs sport


def test_openvino_fp32_passes_the_task_check(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    result = convert(minilm_folder(), target="openvino", output_dir=tmp_path / "ov")
    assert result.report is not None and result.report.passed, result.report.failures()
    np.testing.assert_allclose(load(result.artifact).embed(SENTENCES), encoded(minilm_folder(), SENTENCES),
                               atol=1e-5)


@pytest.mark.slow
def test_openvino_bf16_the_fastest_passing_precision_passes_the_task_check(tmp_path: Path) -> None:
    """OpenVINO bf16, the fastest precision that passes in benchmarks/vs_sentence_transformers.py (README), passes its
    task check here too and keeps every embedding within the check's cosine of sentence-transformers'."""
    pytest.importorskip("openvino")
    result = convert(minilm_folder(), target="openvino", precision="bf16", output_dir=tmp_path / "ov")
    assert result.report is not None and result.report.passed, result.report.failures()
    got, want = load(result.artifact).embed(SENTENCES), encoded(minilm_folder(), SENTENCES)
    assert np.min(np.sum(got * want, axis=1)) >= CRITERIA["sentence-embedding"].min_cosine


def test_a_planted_embedding_fails_the_task_check(embedder: ConversionResult, tmp_path: Path) -> None:
    """30 % of the features zeroed in the evaluation reference: tensor cases pass, the task check fails."""
    from edgeexport.artifact import Artifact, save_tensors, write_manifest
    from edgeexport.manifest import GoldenFile

    copy = tmp_path / "planted"
    shutil.copytree(embedder.artifact, copy)
    artifact = Artifact.open(copy)
    block = artifact.manifest.evaluation
    want = artifact.read_tensors(GoldenFile.from_dict(block["reference"], "r"))["reference"].copy()
    want[:, : int(0.3 * want.shape[1])] = 0
    block["reference"] = save_tensors(copy, block["reference"]["file"], {"reference": want}).to_dict()
    write_manifest(copy, artifact.manifest)
    result = CliRunner().invoke(app, ["validate", str(copy)])
    assert result.exit_code == 1, result.output
    assert "task agreement: cosine with the reference" in result.output


# --------------------------------------------------------------------------- no silent random heads


def test_a_head_less_folder_is_refused_for_a_head_task() -> None:
    result = CliRunner().invoke(app, ["convert", str(minilm_folder()), "--task", "sequence-classification",
                                      "-o", "unused"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: '{minilm_folder()}' has no weights for classifier.bias, classifier.weight (BertModel with task "
        "'sequence-classification'): they would be random; convert a folder with a trained sequence-classification "
        "head, or pass --allow-random-head to convert it with the random head")
    assert not Path("unused").exists()


def test_allow_random_head_converts_and_marks_it(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    transformers.BertModel(TINY_BERT).save_pretrained(tmp_path / "body")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "body"), "--task", "sequence-classification",
                                      "--allow-random-head", "--no-validate", "-o", str(tmp_path / "random")])
    assert result.exit_code == 0, result.output
    assert "random head (classifier.bias, classifier.weight)" in result.output.splitlines()[0]
    assert "LOAD REPORT" not in result.output + "".join(capfd.readouterr())
    manifest = json.loads((tmp_path / "random" / "manifest.json").read_text())
    assert manifest["model"]["random_head"] == ["classifier.bias", "classifier.weight"]
    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "random")])
    assert "random head (classifier.bias, classifier.weight)" in inspected.output
    with pytest.raises(UsageError, match=r"^embed\(\) needs a sentence-embedding artifact; this one is "
                                         r"'sequence-classification'"):
        load(tmp_path / "random").embed(["hello"])


# --------------------------------------------------------------------------- portable manifests


def test_two_folders_with_the_same_weights_give_identical_artifacts(embedder: ConversionResult,
                                                                     tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / FOLDER_NAME
    shutil.copytree(minilm_folder(), moved)
    again = convert(moved, output_dir=tmp_path / "again", validate=False)
    first = json.loads((embedder.artifact / "manifest.json").read_text())
    second = json.loads((again.artifact / "manifest.json").read_text())
    assert first["model"]["source"] == f"folder:{FOLDER_NAME}"
    assert first["model"]["weights_sha256"] == sha256_file(minilm_folder() / "model.safetensors")
    for text in ((embedder.artifact / "manifest.json").read_text(), (again.artifact / "manifest.json").read_text()):
        assert str(minilm_folder().parent) not in text and str(tmp_path) not in text
    first.pop("created_at"), second.pop("created_at")
    assert first == second
    for relative in first["files"]:
        assert (again.artifact / relative).read_bytes() == (embedder.artifact / relative).read_bytes(), relative


def test_reference_of_a_folder_artifact_is_found_by_name_and_digest(embedder: ConversionResult, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", str(embedder.artifact), "--reference"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: the artifact was converted from folder '{FOLDER_NAME}' (weights sha256 "
        f"{sha256_file(minilm_folder() / 'model.safetensors')[:12]}), which is not in the working directory; run "
        "from the directory that holds that folder")
    monkeypatch.chdir(minilm_folder().parent)
    result = CliRunner().invoke(app, ["validate", str(embedder.artifact), "--reference"])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- sentence-transformers modules


def _sentence_folder(folder: Path, modules: list[dict], pooling: dict[str, bool], dense: bool = False) -> Path:
    """A tiny BERT saved as a sentence-transformers folder with the given modules."""
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=1000, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, **{f"pooling_mode_{k}": v for k, v in pooling.items()}}))
    if dense:
        from safetensors.torch import save_file

        (folder / "2_Dense").mkdir()
        (folder / "2_Dense" / "config.json").write_text(json.dumps(
            {"in_features": 64, "out_features": 16, "bias": True,
             "activation_function": "torch.nn.modules.activation.Tanh"}))
        save_file({"linear.weight": torch.randn(16, 64), "linear.bias": torch.randn(16)},
                  str(folder / "2_Dense" / "model.safetensors"))
    return folder


MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]


def test_cls_and_max_pooling_with_a_dense_layer(tmp_path: Path) -> None:
    modules = [*MODULES, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    folder = _sentence_folder(tmp_path / "st", modules, {"cls_token": True, "max_tokens": True}, dense=True)
    result = convert(folder, output_dir=tmp_path / "out")
    assert result.report is not None and result.report.passed, result.report.failures()
    assert result.manifest.outputs[0].shape[-1] == 16
    inputs = result.reference.make_inputs()
    with torch.inference_mode():
        body = transformers.BertModel.from_pretrained(folder).eval()
        tokens = body(input_ids=torch.from_numpy(inputs["input_ids"]),
                      attention_mask=torch.from_numpy(inputs["attention_mask"])).last_hidden_state
        mask = torch.from_numpy(inputs["attention_mask"]).unsqueeze(-1)
        pooled = torch.cat([tokens[:, 0], tokens.masked_fill(mask == 0, -1e9).max(1).values], -1)
        from safetensors.torch import load_file

        dense = load_file(str(folder / "2_Dense" / "model.safetensors"))
        want = torch.tanh(pooled @ dense["linear.weight"].T + dense["linear.bias"]).numpy()
    np.testing.assert_allclose(result.reference.run(inputs)["sentence_embedding"], want, atol=1e-5)


def test_a_module_that_cannot_go_into_the_graph_is_refused_by_name(tmp_path: Path) -> None:
    modules = [*MODULES, {"idx": 2, "name": "2", "path": "2_Router", "type": "sentence_transformers.models.Router"}]
    folder = _sentence_folder(tmp_path / "st", modules, {"mean_tokens": True})
    with pytest.raises(UnsupportedError, match=r"^sentence-transformers module 'sentence_transformers.models.Router' "
                                               r"\(2_Router\) cannot go into the graph; edgeexport converts "
                                               r"Transformer, Pooling, Dense and Normalize modules"):
        convert(folder, output_dir=tmp_path / "out")


def test_sentence_embedding_needs_a_sentence_transformers_folder(tmp_path: Path) -> None:
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=64, vocab_size=100)).save_pretrained(tmp_path / "b")
    with pytest.raises(Exception, match=r"^task 'sentence-embedding' needs a sentence-transformers folder"):
        convert(tmp_path / "b", task="sentence-embedding", output_dir=tmp_path / "out")


# --------------------------------------------------------------------------- feature extraction


BASE_MODELS = {
    "bert": (transformers.BertModel, TINY_BERT, ["last_hidden_state", "pooler_output"]),
    "vit": (transformers.ViTModel, transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                                           num_hidden_layers=2, num_attention_heads=2,
                                                           intermediate_size=64),
            ["last_hidden_state", "pooler_output"]),
    "convnext": (transformers.ConvNextModel, transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64],
                                                                         depths=[1, 1, 1, 1], image_size=64),
                 ["last_hidden_state", "pooler_output"]),
    "wav2vec2": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16, 16],
        conv_stride=[5, 2], conv_kernel=[10, 3], num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
        ["last_hidden_state"]),
}


@pytest.mark.parametrize("family", BASE_MODELS)
def test_a_head_less_folder_is_feature_extraction(family: str, tmp_path: Path) -> None:
    model_class, config, outputs = BASE_MODELS[family]
    torch.manual_seed(0)
    model_class(config).save_pretrained(tmp_path / family)
    result = convert(tmp_path / family, output_dir=tmp_path / "out")
    assert result.manifest.model["task"] == "feature-extraction"
    assert result.manifest.output_names == outputs
    assert result.report is not None and result.report.passed, result.report.failures()
    if family != "bert":  # the saved BERT folder has no tokenizer, so no texts to evaluate; media need none
        agreement = result.report.agreement  # pooled over patches, frames or a convolutional map's positions
        assert agreement is not None and agreement.passed and agreement.measures["min_cosine"] > 0.99, agreement


def test_missing_modules_file_entries_are_one_line(tmp_path: Path) -> None:
    folder = _sentence_folder(tmp_path / "st", MODULES[:1], {"mean_tokens": True})
    with pytest.raises(ModelLoadError, match=r"names no Transformer and Pooling module; pass --task "
                                             r"feature-extraction"):
        convert(folder, output_dir=tmp_path / "out")


def test_corrupt_evaluation_texts_are_one_line(embedder: ConversionResult, tmp_path: Path) -> None:
    from edgeexport.artifact import Artifact, write_manifest

    copy = tmp_path / "corrupt"
    shutil.copytree(embedder.artifact, copy)
    (copy / "evaluation" / "texts.json").write_text('{"not": "a list"}')
    write_manifest(copy, Artifact.open(copy).manifest)
    result = CliRunner().invoke(app, ["validate", str(copy)])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: evaluation texts 'evaluation/texts.json' must be a non-empty JSON list of "
                                     "strings or of [question, context] or [source, target] pairs; re-run convert")
