"""Generation with a KV cache: ONNX and OpenVINO decoders (one merged graph, or an encoder +
decoder bundle) driven by the numpy loop reproduce transformers' ``generate()`` token for token,
greedily and with its options (beam search, penalties, minimum lengths) taken from the
artifact's generation config or given per call; int8-weights and int4-weights decoders stay within their tolerance."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer
from typer.testing import CliRunner

from edgeexport.artifact import Artifact
from edgeexport.bundle import BUNDLE_NAME, Bundle
from edgeexport.cli import app
from edgeexport.conversion import ConversionResult, convert
from edgeexport.decoding import ban_repeated_ngrams, penalize_repetitions
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.generation_spec import TOKENIZER_FILE, GenerationConfig, GenerationSpec, past_names, present_names
from edgeexport.generator import Generator, sample
from edgeexport.manifest import Manifest
from edgeexport.processing import position_ids
from edgeexport.reference import ReferenceBundle, ReferenceModel, load_reference
from edgeexport.reference.processors import zoo_tokenizer
from edgeexport.reference.sentences import split
from edgeexport.runner import load
from edgeexport.tasks import task_head
from edgeexport.validation.metrics import compare_output
from edgeexport.validation.parity import check_parity
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
    """Save the tiny model with save_pretrained, gpt2 with the zoo's tokenizer (byte-level BPE of the built-in corpus,
    so that its evaluation sentences are tokens the model knows)."""
    task, init = MODELS[name]
    spec = get_spec(name)
    config = transformers.AutoConfig.for_model(spec.model_type, **spec.presets["tiny"], **init)
    torch.manual_seed(0)
    model = getattr(transformers, task_head(task).auto_class).from_config(config)
    model.save_pretrained(folder)
    if name == "gpt2":
        (folder / "tokenizer.json").write_bytes(zoo_tokenizer(name, config.vocab_size))


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


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """transformers' generate() on the tiny models: its per-step overhead costs ~10x CPU with 2 threads on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _hf_model(result: Converted | ConversionResult) -> torch.nn.Module:
    reference = getattr(result.reference, "components", {}).get("decoder", result.reference)
    return reference.module.model


def _prompt(batch: int, vocab: int = 1000, pad: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Random prompts of 8 tokens; with batch 2 the second row is 5 tokens, left-padded with ``pad``."""
    ids = np.random.default_rng(7).integers(3, vocab, (batch, 8))
    mask = np.ones_like(ids)
    if batch > 1:
        ids[1, :3], mask[1, :3] = pad, 0
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


def _golden_sentences(tokenizer: Any, count: int, seed: int, offset: int = 0) -> list[list[int]]:
    """The token ids of the golden split's sentences a case of ``count`` rows and ``seed`` takes (each alone)."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pool = [sentence for sentence, _ in split("golden")]
    return [tokenizer.encode(pool[(seed * count + row + offset) % len(pool)]).ids for row in range(count)]


def test_a_causal_decoders_golden_step_continues_sentences_over_its_own_cache() -> None:
    """The decode step (6 cached tokens, 1 new) is the golden sentences' 7th token over the cache the decoder gives
    their first 6: its logits are those of the whole 7 tokens run at once over an empty cache, at the last. The
    prefill (no past) is right-padded, each row 2 tokens shorter."""
    reference = load_reference("gpt2", task="causal-lm-with-past")
    step = reference.make_inputs(dict(reference.shape_cases()[1][1]), seed=1)
    ids = np.array([tokens[:7] for tokens in _golden_sentences(reference.input_source.text.load(), 3, 1)])
    assert np.array_equal(step["input_ids"], ids[:, 6:]) and step["position_ids"].tolist() == [[6]] * 3
    assert (step["attention_mask"] == 1).all()
    whole = {**step, "input_ids": ids, "position_ids": position_ids(step["attention_mask"]),
             **{name: step[name][:, :, :0] for name in past_names(2)}}
    assert np.allclose(reference.run(step)["logits"][:, 0], reference.run(whole)["logits"][:, -1], atol=1e-5)
    prefill = reference.make_inputs(dict(reference.shape_cases()[0][1]), seed=0)
    assert prefill["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_an_encoder_decoders_golden_step_continues_targets_over_the_sources() -> None:
    """The BART decoder's decode step is the decoder-start token and a target sentence's first 5 tokens (``<s>``
    first) cached, its 6th new, over the cross-attention of the golden case's sources (the encoder's own golden
    inputs): its logits are those of the whole decoder ids run at once over an empty cache."""
    bundle = load_reference("bart", task="seq2seq-lm-with-past")
    encoder, decoder = bundle.components["encoder"], bundle.components["decoder"]
    sizes = dict(decoder.shape_cases()[1][1])
    step = decoder.make_inputs(sizes, seed=1)
    sources = encoder.make_inputs({"batch": 3, "encoder_sequence": 13}, seed=1)
    assert np.array_equal(step["encoder_attention_mask"], sources["attention_mask"])
    cross = encoder.run(sources)
    assert all(np.array_equal(step[name], value) for name, value in cross.items())
    targets = _golden_sentences(decoder.input_source.text.load(), 3, 1, offset=len(split("golden")) // 2)
    ids = np.array([[2, *tokens[:6]] for tokens in targets])
    assert step["input_ids"][:, 0].tolist() == [tokens[5] for tokens in targets]
    whole = {**step, "input_ids": ids, **{name: step[name][:, :, :0] for name in past_names(2)}}
    assert np.allclose(decoder.run(step)["logits"][:, 0], decoder.run(whole)["logits"][:, -1], atol=1e-5)


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
    assert spec.config == GenerationConfig(), "a model without generation settings records the defaults"
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
    generation = data.pop("generation")
    older = {key: value for key, value in generation.items() if key != "generation_config"}
    assert GenerationSpec.from_dict(older).config == GenerationConfig(), "a block from before generation_config is greedy"
    with pytest.raises(ArtifactError, match=r"generation.generation_config: num_beams must be at least 1 \(1 = no beam search\), got 0"):
        GenerationSpec.from_dict({**older, "generation_config": {"num_beams": 0}})
    with pytest.raises(ArtifactError, match="generation.generation_config.early_stopping has the wrong type: 1"):
        GenerationSpec.from_dict({**older, "generation_config": {"early_stopping": 1}})
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
    with torch.inference_mode(), _one_torch_thread():
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


# Cases of transformers' generate() options: name -> (options, the case they change). The tiny models
# seldom produce their EOS, so "stop" cases end rows at a token the model does produce (STOP): beams
# then end at different lengths, where min_new_tokens, length_penalty and early_stopping decide.
# min_new_tokens 2 sits on an edge: greedy GPT-2 stops its rows after 3 and 2 new tokens, so banning STOP
# one step too few or too many changes the tokens (both off-by-ones were planted and caught).
STOP = {"gpt2": 323, "bart": 380, "t5": 934}
OPTION_CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "greedy": ({}, None),
    "repetition_penalty": ({"repetition_penalty": 1.3}, "greedy"),
    "no_repeat_ngram_size": ({"no_repeat_ngram_size": 2}, "greedy"),
    "stop": ({"eos_token_id": "stop"}, None),
    "stop, min_new_tokens": ({"eos_token_id": "stop", "min_new_tokens": 2}, "stop"),
    "stop, beams": ({"eos_token_id": "stop", "num_beams": 4}, "stop"),
    "stop, beams, early_stopping=True": ({"eos_token_id": "stop", "num_beams": 4, "early_stopping": True},
                                         "stop, beams"),
    "stop, beams, early_stopping=never": ({"eos_token_id": "stop", "num_beams": 4, "early_stopping": "never"},
                                          "stop, beams"),
    "stop, beams, length_penalty=2": ({"eos_token_id": "stop", "num_beams": 4, "length_penalty": 2.0}, "stop, beams"),
    "beams with penalties": ({"num_beams": 3, "repetition_penalty": 1.2, "no_repeat_ngram_size": 3,
                              "min_new_tokens": 8, "length_penalty": 0.5}, None),
}


def test_generation_options_match_transformers_generate(converted: Callable[..., Converted]) -> None:
    """Each case gives transformers' tokens on every model, and changes the tokens of the case it
    varies on at least one model (so leaving an option out of the loop fails here). The left padding is
    a token GPT-2 generates (373), which the repetition penalty must skip as transformers does."""
    ids, mask = _prompt(2, pad=373)
    changed = set()
    for name in MODELS:
        result = converted(name)
        tokens = {}
        with Generator.load(result.artifact) as generator:
            for case, (options, base) in OPTION_CASES.items():
                options = {**options, **({"eos_token_id": STOP[name]} if "eos_token_id" in options else {})}
                expected = _transformers_tokens(result, ids, mask, **options)
                assert generator.generate(ids, mask, max_new_tokens=NEW_TOKENS, **options).tokens.tolist() == expected, \
                    f"{name}, {case}"
                assert len(np.unique(expected)) > 3, f"{name}, {case}: a weak check, the model repeats few tokens"
                tokens[case] = expected
                if base is not None and expected != tokens[base]:
                    changed.add(case)
    unchanged = [case for case, (_, base) in OPTION_CASES.items() if base is not None and case not in changed]
    assert not unchanged, f"options that change no model's tokens check nothing: {unchanged}"


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_openvino_beam_search_matches_transformers_generate(name: str, converted: Callable[..., Converted]) -> None:
    result = converted(name, "openvino")
    ids, mask = _prompt(2)
    options = {"eos_token_id": STOP[name], **OPTION_CASES["beams with penalties"][0]}
    with Generator.load(result.artifact) as generator:
        ours = generator.generate(ids, mask, max_new_tokens=NEW_TOKENS, **options).tokens
    assert ours.tolist() == _transformers_tokens(result, ids, mask, **options)


def _transformers_tokens(result: Converted, ids: np.ndarray, mask: np.ndarray, **options: Any) -> list[list[int]]:
    """The new tokens of transformers' generate() (NEW_TOKENS at most, no sampling) with ``options``."""
    model = _hf_model(result)
    with torch.inference_mode(), _one_torch_thread():
        sequences = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                                   **{"max_new_tokens": NEW_TOKENS, **options})
    return sequences[:, 1 if model.config.is_encoder_decoder else ids.shape[1]:].tolist()


def test_artifact_generation_config_is_the_default(converted: Callable[..., Converted], tmp_path: Path) -> None:
    """An artifact whose generation config asks for beam search and penalties decodes with them unless a
    call (or a CLI flag) overrides them."""
    result = converted("gpt2")
    settings = {"num_beams": 3, "length_penalty": 0.8, "early_stopping": "never", "repetition_penalty": 1.2,
                "no_repeat_ngram_size": 3, "min_new_tokens": 6, "max_new_tokens": 20}
    artifact = shutil.copytree(result.artifact, tmp_path / "gpt2")
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["generation"]["generation_config"].update(settings)
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    ids, mask = _prompt(2)
    greedy = {**settings, "num_beams": 1, "repetition_penalty": 1.0}
    with Generator.load(artifact) as generator:
        assert generator.config == GenerationConfig(**settings)
        assert generator.generate(ids, mask).tokens.tolist() == _transformers_tokens(result, ids, mask, **settings)
        overridden = generator.generate(ids, mask, num_beams=1, repetition_penalty=1.0).tokens.tolist()
    assert overridden == _transformers_tokens(result, ids, mask, **greedy)
    assert overridden != _transformers_tokens(result, ids, mask, **settings)
    prompt = ",".join(str(i) for i in ids[0])
    flags = ["--num-beams", "1", "--repetition-penalty", "1"]
    printed = cli.invoke(app, ["generate", str(artifact), "--prompt-ids", prompt, *flags, "--json"])
    assert printed.exit_code == 0, printed.stderr
    assert json.loads(printed.stdout)["token_ids"][0] == _transformers_tokens(result, ids[:1], mask[:1], **greedy)[0]


def test_conversion_records_the_generation_config(converted: Callable[..., Converted], tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A save_pretrained folder's generation settings reach the decoder's manifest block, also when they
    sit in config.json as in older checkpoints (facebook/bart-base: num_beams 4, no_repeat_ngram_size 3)."""
    source = shutil.copytree(converted("bart").artifact.parent / "source", tmp_path / "bart")
    (source / "generation_config.json").unlink()
    config = json.loads((source / "config.json").read_text())
    legacy = {"num_beams": 4, "no_repeat_ngram_size": 3, "early_stopping": True, "length_penalty": 2.0,
              "min_length": 5, "max_length": 40, "suppress_tokens": [7]}
    (source / "config.json").write_text(json.dumps({**config, **legacy}))
    with caplog.at_level("WARNING", logger="edgeexport.reference.decoders_with_past"):
        bundle = load_reference(source, task="seq2seq-lm-with-past")
    decoder = GenerationSpec.from_dict(bundle.components["decoder"].generation)
    assert decoder.config == GenerationConfig(**{k: v for k, v in legacy.items() if k != "suppress_tokens"})
    assert "decodes with max_length=40, min_length=5, num_beams=4, length_penalty=2.0" in decoder.summary()
    assert "generation_config" not in bundle.components["encoder"].generation
    assert "left out of the artifact (its generation loop does not apply them): suppress_tokens" in caplog.text


def test_logits_rules_match_transformers_processors() -> None:
    """Edge cases the models seldom reach: ids past the scores' vocab, unigrams, ignored prompt prefixes."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    sequences = rng.integers(0, 12, (6, 9))  # ids 10 and 11 lie past a vocab of 10
    scores = rng.standard_normal((6, 10)).astype(np.float32)
    prefix = np.array([0, 3, 0, 9, 1, 0])
    torch_ids, torch_scores = torch.from_numpy(sequences), torch.from_numpy(scores)
    for penalty, ignored in ((1.5, None), (0.7, prefix)):
        expected = RepetitionPenaltyLogitsProcessor(penalty, None if ignored is None else torch.from_numpy(ignored))(
            torch_ids, torch_scores.clone())
        assert np.array_equal(penalize_repetitions(sequences, scores, penalty, ignored), expected.numpy())
    for size in (1, 2, 3, 10):
        expected = NoRepeatNGramLogitsProcessor(size)(torch_ids, torch_scores.clone())
        assert np.array_equal(ban_repeated_ngrams(sequences, scores, size), expected.numpy()), size


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
        with pytest.raises(UsageError, match="num_beams must be at least 1 \\(1 = no beam search\\), got 0"):
            generator.generate([[5]], num_beams=0)
        with pytest.raises(UsageError, match=r"beam sampling \(do_sample with num_beams=2\) is not supported"):
            generator.generate([[5]], num_beams=2, do_sample=True)
        with pytest.raises(UsageError, match="early_stopping must be true, false or never, got 'maybe'"):
            generator.generate([[5]], early_stopping="maybe")
        with pytest.raises(UsageError, match="repetition_penalty must be > 0"):
            generator.generate([[5]], repetition_penalty=0)
        with pytest.raises(UsageError, match="num_beams has the wrong type: 2.5"):
            generator.generate([[5]], num_beams=2.5)
        with pytest.raises(UsageError, match="unknown generation option 'beams'"):
            generator.generate([[5]], beams=2)
        with pytest.raises(UsageError, match="settles the tokens only at its end, so it cannot stream"):
            generator.stream([[5]], num_beams=2)
    for flags, message in ((["--num-beams", "0"], "num_beams must be at least 1"),
                           (["--early-stopping", "maybe"], "early_stopping must be true, false or never")):
        printed = cli.invoke(app, ["generate", str(converted("gpt2").artifact), "--prompt-ids", "5,6", *flags])
        assert printed.exit_code == 2 and printed.stderr.startswith(f"error: {message}")
        assert len(printed.stderr.strip().splitlines()) == 1


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
    artifact = converted("gpt2").artifact
    options = ["generate", str(artifact), "--prompt", "The river flows", "--max-new-tokens", "6"]
    result = cli.invoke(app, options)
    assert result.exit_code == 0, result.stderr
    whole = json.loads(cli.invoke(app, [*options, "--json"]).stdout)
    tokenizer = Tokenizer.from_file(str(artifact / TOKENIZER_FILE))
    assert result.stdout.strip() == whole["text"].strip() == tokenizer.decode(whole["token_ids"][0]).strip() != ""
    assert "tokens/s (first token" in result.stderr


def test_cli_generate_says_when_the_model_ends_the_sequence_at_once(converted: Callable[..., Converted],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the EOS id is the token the model picks first (as a random BART does), so it ends at once; the note
    says so and names --min-new-tokens, which then gets the tokens asked for."""
    artifact = str(converted("gpt2").artifact)
    first = cli.invoke(app, ["generate", artifact, "--prompt-ids", "5,6", "--max-new-tokens", "1", "--json"])
    assert first.exit_code == 0, first.stderr
    token = json.loads(first.stdout)["token_ids"][0][0]
    monkeypatch.setattr(Generator, "_eos", lambda self, eos_token_id: (token,))
    result = cli.invoke(app, ["generate", artifact, "--prompt-ids", "5,6"])
    assert result.exit_code == 0, result.stderr
    note, count = result.stderr.strip().splitlines()
    assert note == (f"note: the model ended the sequence at once (its first new token is EOS, id {token}); "
                    "--min-new-tokens N bans EOS for N tokens")
    assert count.startswith("1 token in ")
    more = cli.invoke(app, ["generate", artifact, "--prompt-ids", "5,6", "--min-new-tokens", "3", "--max-new-tokens",
                            "3", "--json"])
    data = json.loads(more.stdout)
    assert data["tokens"] == 3 and not data["ended_at_once"] and "note:" not in more.stderr
    tokenizer = Tokenizer.from_file(str(Path(artifact) / TOKENIZER_FILE))
    assert data["text"] == tokenizer.decode(data["token_ids"][0])


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
    """Every component converts with OpenVINO's PyTorch frontend: a cache built by concatenating onto
    an empty tensor sent them through ONNX (aten::cat not converted) at several times the export time."""
    result = converted(name, "openvino")
    report = check_parity(result.artifact, result.reference)
    assert report.passed, report.failures()
    assert result.manifest.runtime == "openvino"
    bundled = (result.artifact / BUNDLE_NAME).exists()
    folders = [result.artifact / role for role in ("encoder", "decoder")] if bundled else [result.artifact]
    assert [Artifact.open(folder).manifest.exporter["fallback_reason"] for folder in folders] == [None] * len(folders)
    assert {Artifact.open(folder).manifest.exporter["strategy"] for folder in folders} == {"pytorch"}
    _assert_greedy_parity(result, *_prompt(2))


@pytest.mark.parametrize(("target", "precision"), [("onnx", "int8-weights"), ("openvino", "int8-weights"),
                                                  ("openvino", "int4-weights"), ("onnx", "int4-weights")])
def test_compressed_weights_generation_stays_within_its_tolerance(target: str, precision: str,
                                                                  converted: Callable[..., Converted]) -> None:
    """Quantized decoders need not pick the same tokens (random weights have near-ties), so each
    row is compared up to and including its first differing token, where both saw the same
    prefix: every such step's logits must meet the precision's bounds (errors in spreads, scale, top-1).
    The task agreement on the evaluation sequences is judged too: int8-weights passes it; int4-weights on this model
    (weights 10x the zoo's) changes 31 % of the next tokens and 29 of 32 greedy continuations, a known failure
    (docs/parity.md, "Language models") that misses top-1 and greedy agreement but not the KL bound."""
    result = converted("gpt2", target, precision)
    report = check_parity(result.artifact, result.reference)
    assert report.agreement is not None and report.agreement.task == "causal-lm-with-past"
    if precision == "int4-weights":
        assert all(case.passed for case in report.cases), report.failures()
        assert [miss.split(" ")[0] for miss in report.agreement.misses] == ["top-1", "greedy"], report.agreement.misses
    else:
        assert report.passed, report.failures()
    ids, mask = _prompt(2)
    with torch.inference_mode(), _one_torch_thread():
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
