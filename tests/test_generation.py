"""Generation with a KV cache: ONNX and OpenVINO decoders (one merged graph, or an encoder +
decoder bundle) driven by the numpy loop reproduce transformers' ``generate()`` token for token;
int8-weights decoders stay within their tolerance."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, Manifest
from edgeexport.bundle import BUNDLE_NAME, Bundle
from edgeexport.cli import app
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.generation_spec import TOKENIZER_FILE, GenerationSpec, past_names, present_names
from edgeexport.generator import Generator, sample
from edgeexport.pipeline import ConversionResult, check_parity, convert
from edgeexport.reference import ReferenceBundle, ReferenceModel, load_reference
from edgeexport.runner import load
from edgeexport.tasks import task_head
from edgeexport.validation.metrics import compare_output
from edgeexport.zoo import get_spec

NEW_TOKENS = 32
# Zoo tiny presets with a larger weight init: the default (std 0.02) repeats one token forever,
# which would make "same tokens as transformers" a weak check.
MODELS = {
    "gpt2": ("causal-lm-with-past", {"initializer_range": 0.2}),
    "bart": ("seq2seq-lm-with-past", {"init_std": 0.2}),
    "t5": ("seq2seq-lm-with-past", {"initializer_factor": 3.0}),
}
cli = CliRunner()


def _word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json: ``w1 w2`` -> [1, 2]; id 0 is [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))


@dataclass
class Converted:
    """An artifact (or bundle) of one of MODELS and its PyTorch reference, loaded from the source folder."""

    artifact: Path
    reference: ReferenceModel | ReferenceBundle

    @property
    def manifest(self) -> Manifest:
        """The decoder's manifest."""
        folder = self.artifact / "decoder" if (self.artifact / BUNDLE_NAME).exists() else self.artifact
        return Artifact.open(folder).manifest


def _save_source(name: str, folder: Path) -> None:
    """Save the tiny model (with a tokenizer for gpt2) with save_pretrained."""
    task, init = MODELS[name]
    spec = get_spec(name)
    config = transformers.AutoConfig.for_model(spec.model_type, **spec.presets["tiny"], **init)
    torch.manual_seed(0)
    model = getattr(transformers, task_head(task).auto_class).from_config(config)
    model.save_pretrained(folder)
    if name == "gpt2":
        _word_tokenizer(folder, config.vocab_size)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Converted]:
    """``converted(name, target="onnx", precision=None)``: one of MODELS saved with save_pretrained and
    that folder converted on first use, once per test run even under xdist."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, seen by all workers
    cache: dict[tuple[str, str, str | None], Converted] = {}

    def get(name: str, target: str = "onnx", precision: str | None = None) -> Converted:
        key = (name, target, precision)
        if key not in cache:
            root = shared / f"generation-{name}"
            artifact = root / "-".join(filter(None, (target, precision)))
            root.mkdir(exist_ok=True)
            task, _ = MODELS[name]
            with _locked(shared / f"generation-{name}.lock"):
                if not (root / "source").exists():
                    _save_source(name, root / "source")
                if not artifact.exists():
                    convert(root / "source", task=task, target=target, precision=precision, output_dir=artifact,
                            validate=False)
            cache[key] = Converted(artifact, load_reference(root / "source", task=task))
        return cache[key]

    return get


def _hf_model(result: Converted | ConversionResult) -> torch.nn.Module:
    reference = getattr(result.reference, "components", {}).get("decoder", result.reference)
    return reference.module.model


def _prompt(batch: int, vocab: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of 8 tokens; with batch 2 the second row is 5 tokens, left-padded."""
    ids = np.random.default_rng(7).integers(3, vocab, (batch, 8))
    mask = np.ones_like(ids)
    if batch > 1:
        ids[1, :3], mask[1, :3] = 1, 0
    return ids, mask


# --------------------------------------------------------------------------- references


def test_causal_reference_follows_the_cache_convention() -> None:
    reference = load_reference("gpt2", task="causal-lm-with-past")
    assert reference.input_names == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    assert reference.output_names == ["logits", *present_names(2)]
    dims = {spec.name: spec.dims for spec in reference.inputs}
    assert dims["attention_mask"] == ("batch", "past_sequence+sequence")
    assert dims["past_key_values.1.value"] == ("batch", 2, "past_sequence", 16)
    assert reference.shape_cases()[0][1]["past_sequence"] == 0, "the example case is a prefill with an empty past"
    assert GenerationSpec.from_dict(reference.generation).tokens.eos == (999,)


def test_seq2seq_reference_is_an_encoder_and_a_decoder() -> None:
    bundle = load_reference("t5", task="seq2seq-lm-with-past")
    encoder, decoder = bundle.components["encoder"], bundle.components["decoder"]
    assert encoder.output_names == [f"encoder_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert decoder.input_names[:2] == ["input_ids", "encoder_attention_mask"]
    assert decoder.input_names[2:] == past_names(2) + encoder.output_names
    assert GenerationSpec.from_dict(decoder.generation).tokens.decoder_start == 0


def test_with_past_task_needs_the_base_task() -> None:
    with pytest.raises(UsageError, match="does not support task 'causal-lm-with-past'; its tasks: sequence-"):
        load_reference("bert", task="causal-lm-with-past")
    with pytest.raises(UsageError, match="its tasks: causal-lm, causal-lm-with-past"):
        load_reference("gpt2", task="seq2seq-lm-with-past")


# --------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize("name", list(MODELS))
def test_conversion_passes_parity_including_an_empty_past(name: str, converted: Callable[..., Converted]) -> None:
    result = converted(name)
    report = check_parity(result.artifact, result.reference)
    assert report.passed, report.failures()
    assert {c.source for c in report.cases} == {"golden", "reference"}
    prefill = [c for c in report.cases if c.axes.get("past_sequence") == 0]
    assert prefill and all(c.passed for c in prefill), "past_sequence = 0 runs on the graph traced at past >= 2"
    spec = GenerationSpec.of(result.manifest)
    assert spec.role == "decoder" and spec.present == tuple(present_names(2))
    shapes = {t.name: t.shape for t in result.manifest.outputs}
    assert shapes["present.0.key"] == ("batch", 2, "past_sequence+sequence", 16)


def test_gpt2_artifact_carries_its_tokenizer(converted: Callable[..., Converted]) -> None:
    result = converted("gpt2")
    assert TOKENIZER_FILE in result.manifest.files
    assert GenerationSpec.of(result.manifest).tokenizer == TOKENIZER_FILE
    assert not (result.artifact / BUNDLE_NAME).exists()


def test_seq2seq_bundle_holds_two_normal_artifacts(converted: Callable[..., Converted], tmp_path: Path) -> None:
    result = converted("bart")
    bundle = Bundle.open(result.artifact)
    assert bundle.components == {"encoder": "encoder", "decoder": "decoder"}
    bundle.verify()
    roles = {role: GenerationSpec.of(Artifact.open(bundle.folder(role)).manifest).role for role in bundle.components}
    assert roles == {"encoder": "encoder", "decoder": "decoder"}
    copy = tmp_path / "bundle"
    shutil.copytree(result.artifact, copy)
    manifest = copy / "decoder" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"fp32"', '"fp16"'))
    with pytest.raises(ArtifactError, match="component 'decoder' does not match its sha256 in bundle.json"):
        Bundle.open(copy).verify()
    with pytest.raises(ArtifactError, match="is a bundle of encoder, decoder; pass one component"):
        load(copy)


def test_manifest_without_generation_block_still_loads(converted: Callable[..., Converted]) -> None:
    data = converted("gpt2").manifest.to_dict()
    del data["generation"]
    manifest = Manifest.from_dict(data)
    assert manifest.generation == {} and "generation" not in manifest.to_dict()
    with pytest.raises(ArtifactError, match="cannot generate; convert it with --task causal-lm-with-past"):
        GenerationSpec.of(manifest)
    data["generation"] = {"role": "middle"}
    with pytest.raises(ArtifactError, match="generation.role must be one of decoder, encoder"):
        GenerationSpec.of(Manifest.from_dict(data))


# --------------------------------------------------------------------------- generation parity


@pytest.mark.parametrize("batch", [1, 2], ids=["batch1", "batch2-left-padded"])
@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_matches_transformers_generate(name: str, batch: int,
                                              converted: Callable[..., Converted]) -> None:
    tokens = _assert_greedy_parity(converted(name), *_prompt(batch))
    assert len(np.unique(tokens)) > 3, "a weak check: the model repeats one token"


def _assert_greedy_parity(result: Converted | ConversionResult, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Same tokens as transformers' greedy generate() and each step's logits within the manifest tolerance."""
    model = _hf_model(result)
    with torch.inference_mode():
        expected = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                                  use_cache=True, max_new_tokens=NEW_TOKENS, output_logits=True,
                                  return_dict_in_generate=True)
    with Generator.load(result.artifact) as generator:
        ours = generator.generate(ids, mask, max_new_tokens=NEW_TOKENS)
    start = 1 if model.config.is_encoder_decoder else ids.shape[1]  # after decoder_start_token_id / the prompt
    assert ours.tokens.tolist() == expected.sequences[:, start:].tolist()
    tolerance = result.manifest.tolerance
    for step, (got, want) in enumerate(zip(ours.logits, expected.logits)):
        comparison = compare_output("logits", got, want.numpy(), tolerance.for_output("logits"), logits=True)
        assert comparison, f"step {step}: {comparison.reason}"
    return ours.tokens


def test_sampling_is_reproducible_with_a_seed(converted: Callable[..., Converted]) -> None:
    ids, mask = _prompt(2)
    options = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 12}
    with Generator.load(converted("gpt2").artifact) as generator:
        first = generator.generate(ids, mask, seed=3, **options).tokens
        again = generator.generate(ids, mask, seed=3, **options).tokens
        other = generator.generate(ids, mask, seed=4, **options).tokens
        greedy = generator.generate(ids, mask, max_new_tokens=12).tokens
        top1 = generator.generate(ids, mask, seed=5, do_sample=True, top_k=1, max_new_tokens=12).tokens
        nucleus = generator.generate(ids, mask, seed=5, do_sample=True, top_p=1e-6, max_new_tokens=12).tokens
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(top1, greedy) and np.array_equal(nucleus, greedy)


def test_sample_applies_top_k_and_top_p() -> None:
    scores = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    rng = np.random.default_rng(0)
    assert set(sample(scores, rng, top_k=2)) == {0, 1}
    assert set(sample(scores, rng, top_p=0.6)) == {0, 1}  # 0.5 alone is below 0.6; 0.5 + 0.3 reaches it
    drawn = np.bincount(sample(scores, rng), minlength=4) / len(scores)
    assert np.allclose(drawn, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_generation_rejects_bad_inputs(converted: Callable[..., Converted]) -> None:
    with Generator.load(converted("gpt2").artifact) as generator:
        with pytest.raises(InputSpecError, match=r"token ids must be in \[0, 1000\)"):
            generator.generate([[5, 1000]])
        with pytest.raises(UsageError, match="top_p must be in"):
            generator.generate([[5]], do_sample=True, top_p=0)
        with pytest.raises(UsageError, match="--prompt-ids must be comma-separated"):
            generator.prompt(prompt_ids="1,x")


def test_onnxruntime_step_keeps_the_cache_in_ortvalues(converted: Callable[..., Converted]) -> None:
    import onnxruntime

    artifact = Artifact.open(converted("gpt2").artifact)
    inputs, outputs = artifact.load_golden(artifact.manifest.golden[1])
    runner = load(artifact)
    with runner:
        stepped = runner.step(inputs, keep=present_names(2))
        checked = runner(inputs)
    assert isinstance(stepped["present.0.key"], onnxruntime.OrtValue)
    assert isinstance(stepped["logits"], np.ndarray)
    for name in outputs:
        value = stepped[name]
        value = value.numpy() if isinstance(value, onnxruntime.OrtValue) else value
        assert np.array_equal(value, checked[name])


# --------------------------------------------------------------------------- CLI


def test_cli_generate_streams_text_with_the_artifact_tokenizer(converted: Callable[..., Converted]) -> None:
    result = cli.invoke(app, ["generate", str(converted("gpt2").artifact), "--prompt", "w5 w6 w7",
                              "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.stderr
    words = result.stdout.split()
    assert 1 <= len(words) <= 6 and all(w.startswith("w") for w in words)
    assert "tokens/s (first token" in result.stderr


def test_cli_generate_bundle_needs_ids_without_tokenizer(converted: Callable[..., Converted]) -> None:
    bundle = str(converted("bart").artifact)
    result = cli.invoke(app, ["generate", bundle, "--prompt", "hello"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: the artifact has no tokenizer")
    assert "--prompt-ids 1,2,3" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli.invoke(app, ["generate", bundle, "--prompt-ids", "5,6,7", "--max-new-tokens", "4", "--do-sample",
                              "--seed", "1"])
    assert result.exit_code == 0, result.stderr
    assert all(token.isdigit() for token in result.stdout.split())


def test_cli_validate_and_inspect_a_bundle(converted: Callable[..., Converted]) -> None:
    bundle = str(converted("t5").artifact)
    result = cli.invoke(app, ["validate", bundle, "--json"])
    assert result.exit_code == 0, result.stderr
    cases = [c["case"] for c in json.loads(result.stdout)["cases"]]
    assert cases == ["encoder/example", "encoder/alternate", "decoder/example", "decoder/alternate"]
    result = cli.invoke(app, ["inspect", bundle, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data["components"]) == {"encoder", "decoder"} and data["bundle"]["components"]["decoder"] == "decoder"
    result = cli.invoke(app, ["inspect", bundle])
    assert result.exit_code == 0 and "generation" in result.stdout and "(decoder)" in result.stdout
    result = cli.invoke(app, ["validate", bundle, "--atol", "0", "--rounding", "0", "--max-error", "0", "--rms-error", "0"])
    assert result.exit_code == 1 and "parity FAILED: encoder/example/" in result.stderr
    result = cli.invoke(app, ["bench", bundle])
    assert result.exit_code == 2 and "is a bundle of encoder, decoder" in result.stderr


# --------------------------------------------------------------------------- full presets


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "openvino"])
@pytest.mark.parametrize(("name", "task"), [("gpt2", "causal-lm-with-past"), ("bart", "seq2seq-lm-with-past"),
                                            ("t5", "seq2seq-lm-with-past")])
def test_full_preset_greedy_matches_transformers(name: str, task: str, target: str, tmp_path: Path) -> None:
    result = convert(name, task=task, preset="full", target=target, output_dir=tmp_path / name)
    assert result.report is not None and result.report.passed, result.report.failures()
    _assert_greedy_parity(result, *_prompt(1, _hf_model(result).config.vocab_size))


# --------------------------------------------------------------------------- other targets and precisions


@pytest.mark.parametrize("name", list(MODELS))
def test_openvino_greedy_matches_transformers_generate(name: str, converted: Callable[..., Converted]) -> None:
    result = converted(name, "openvino")
    report = check_parity(result.artifact, result.reference)
    assert report.passed, report.failures()
    assert result.manifest.runtime == "openvino"
    _assert_greedy_parity(result, *_prompt(2))


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_int8_weights_generation_stays_within_its_tolerance(target: str, converted: Callable[..., Converted]) -> None:
    """Quantized decoders need not pick the same tokens (random weights have near-ties), so each
    row is compared up to and including its first differing token, where both saw the same
    prefix: every such step's logits must meet the precision's bounds (errors in spreads, scale, top-1)."""
    result = converted("gpt2", target, "int8-weights")
    report = check_parity(result.artifact, result.reference)
    assert report.passed, report.failures()
    ids, mask = _prompt(2)
    with torch.inference_mode():
        expected = _hf_model(result).generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                              do_sample=False, use_cache=True, max_new_tokens=NEW_TOKENS,
                                              output_logits=True, return_dict_in_generate=True)
    with Generator.load(result.artifact) as generator:
        ours = generator.generate(ids, mask, max_new_tokens=NEW_TOKENS)
    tolerance = result.manifest.tolerance
    assert tolerance.min_top1 is not None
    for row, (got, want) in enumerate(zip(ours.tokens, expected.sequences[:, ids.shape[1]:].numpy())):
        differs = np.flatnonzero(got != want)
        compared = int(differs[0]) + 1 if differs.size else NEW_TOKENS
        for step in range(compared):
            comparison = compare_output("logits", ours.logits[step][row], expected.logits[step][row].numpy(),
                                        tolerance.for_output("logits"), logits=True)
            assert comparison, f"row {row} step {step}: {comparison.reason}"
