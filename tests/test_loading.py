"""Model sources: zoo names, save_pretrained folders (zoo and non-zoo architectures), hub ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from edgeexport.artifact import sha256_file
from edgeexport.conversion import convert
from edgeexport.errors import ModelLoadError, UsageError
from edgeexport.reference import load_reference


def test_same_preset_and_seed_give_same_weights() -> None:
    first, second = load_reference("bert"), load_reference("bert")
    inputs = first.make_inputs()
    np.testing.assert_array_equal(first.run(inputs)["logits"], second.run(inputs)["logits"])


def test_save_pretrained_folder_round_trip(tmp_path: Path) -> None:
    zoo = load_reference("bert", task="token-classification")
    folder = tmp_path / "my-bert"
    zoo.module.model.save_pretrained(folder)

    result = convert(folder, output_dir=tmp_path / "out")

    assert result.reference.task == "token-classification"  # read from config.architectures
    assert result.manifest.model["source"] == "folder:my-bert"  # the name, never a build-machine path
    assert result.manifest.model["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert str(tmp_path) not in (result.artifact / "manifest.json").read_text()
    assert result.report is not None and result.report.passed, result.report.failures()
    inputs = zoo.make_inputs()
    np.testing.assert_allclose(result.reference.run(inputs)["logits"], zoo.run(inputs)["logits"], atol=1e-6)


def test_folder_of_an_architecture_outside_the_zoo(tmp_path: Path) -> None:
    config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=500, num_labels=2)
    torch.manual_seed(0)
    transformers.DistilBertForSequenceClassification(config).save_pretrained(tmp_path / "distilbert")

    result = convert(tmp_path / "distilbert", output_dir=tmp_path / "out")

    assert result.reference.task == "sequence-classification"
    assert result.report is not None and result.report.passed, result.report.failures()


def test_folder_model_with_a_short_position_table(tmp_path: Path) -> None:
    """Golden sequences fit the model's 64 positions (the full preset's 128 would not run at all)."""
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "short")

    result = convert(tmp_path / "short", output_dir=tmp_path / "out")

    assert result.report is not None and result.report.passed, result.report.failures()
    assert [case.axes["sequence"] for case in result.manifest.golden] == [62, 31]


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json; save the model with save_pretrained"):
        load_reference(tmp_path / "empty")


def test_corrupt_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="cannot be read as a transformers config"):
        load_reference(tmp_path)


def test_pickled_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    zoo = load_reference("bert")
    zoo.module.model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(zoo.module.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"holds only pickled weights \(pytorch_model.bin\).*--allow-pickle"):
        load_reference(tmp_path)
    loaded = load_reference(tmp_path, allow_pickle=True)
    inputs = zoo.make_inputs()
    np.testing.assert_allclose(loaded.run(inputs)["logits"], zoo.run(inputs)["logits"], atol=1e-6)


def test_hub_id_that_cannot_be_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot fetch 'nobody/no-such-model' from the Hugging Face Hub"):
        load_reference("nobody/no-such-model")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"model": "resnet9000"}, "unknown model 'resnet9000'; choose one of: gpt2, bert, bart"),
    ({"model": "bert", "task": "causal-lm"}, "model 'bert' does not support task 'causal-lm'; its tasks: "
                                             "sequence-classification, token-classification, question-answering"),
    ({"model": "bert", "task": "dancing"}, "unknown task 'dancing'; choose one of: causal-lm"),
    ({"model": "bert", "preset": "huge"}, "unknown preset 'huge'; choose one of: tiny, full"),
])
def test_bad_model_task_preset(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_reference(**kwargs)


def test_zoo_name_wins_over_a_folder_of_the_same_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert").mkdir()
    assert load_reference("bert").source == "zoo"
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_reference("./bert")


def test_vit_image_size_is_dynamic_around_the_trained_size(tmp_path: Path) -> None:
    """The example image is the trained size, the alternate another grid (interpolated position table);
    a folder model trained at the preset's alternate size gets a different alternate."""
    vit = load_reference("vit")
    assert (vit.sizes["height"], vit.sizes["width"], vit.fixed_shape_reason) == ((32, 48), (32, 64), "")
    config = transformers.ViTConfig(image_size=256, patch_size=16, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    folder = load_reference(tmp_path / "vit")
    assert (folder.sizes["height"], folder.sizes["width"]) == ((256, 288), (256, 288))


def test_mask2former_image_size_is_fixed_and_says_why() -> None:
    mask2former = load_reference("mask2former")
    assert set(mask2former.sizes) == {"batch"}
    assert mask2former.fixed_shape_reason.startswith("height and width are fixed at the backbone's image_size")
