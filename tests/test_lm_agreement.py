"""Task agreement of language models (edgeexport.validation.sequence_measures): teacher-forced next tokens, their KL
relative to the reference's spread, and greedy continuations over token-id sequences, the artifact's run left-padded
in batches.

Fixed plants, sized without the thresholds, on a numpy language model with random weights (near-uniform next-token
probabilities, as the zoo's), each caught by one criterion only: logits x1.3 and x0.7 (the KL), the top two next
tokens swapped at every position but a sequence's last (top-1; the greedy tokens follow the last), a cache that lost
the prompt's last token (greedy); another model misses all three, and so does a model that lets the left padding in.
The genuine outputs with noise of 1 % of the logits' spread pass, at the zoo's weight scale and 10x it. Then the tiny
GPT-2 end to end (slow): its ONNX artifact passes on its held-out sentences, and logits x1.3 planted into its graph
fail.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.conversion import convert
from edgeexport.manifest import TensorSpec
from edgeexport.validation.agreement import CRITERIA, Agreement, Criteria, judge_sequences
from edgeexport.reference.processors import zoo_tokenizer
from edgeexport.reference.sentences import split
from edgeexport.validation.sequence_measures import (BATCH, GREEDY_TOKENS, LENGTHS, MAX_TOKENS, SEQUENCES,
                                                     LanguageModel, artifact_view, evaluation_sequences,
                                                     forward_model, left_padded, reference_view, sequence_feed,
                                                     spread, text_sequences, truncated_kl)

LM = CRITERIA["causal-lm"]
VOCAB = 300
SPECS = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
         TensorSpec("attention_mask", "int64", ("batch", "sequence"))]
IDS = evaluation_sequences(VOCAB)
LENGTHS_OF_IDS = (IDS >= 0).sum(1)


class RandomLM:
    """A language model with random weights in numpy: each position's state is a running mean of the token
    embeddings so far; its logits spread about as little as the tiny GPT-2's."""

    def __init__(self, seed: int, width: int = 16, scale: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(VOCAB, width))
        self.head = rng.normal(size=(width, VOCAB)) * 0.5 * scale / np.sqrt(width)

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = feed["attention_mask"][..., None]
        states = np.cumsum(self.embed[feed["input_ids"]] * mask, axis=1) / np.maximum(np.cumsum(mask, axis=1), 1)
        return {"logits": (np.tanh(states) @ self.head).astype(np.float32)}


GENUINE = RandomLM(0)
WANT = reference_view(forward_model(GENUINE, SPECS), IDS)


def judged(model: LanguageModel, want: dict[str, np.ndarray] = WANT, criteria: Criteria = LM) -> Agreement:
    return judge_sequences("causal-lm", artifact_view(model, IDS, want), want, LENGTHS_OF_IDS, criteria)


def planted(change: Callable[[np.ndarray], np.ndarray], genuine: RandomLM = GENUINE) -> LanguageModel:
    return forward_model(lambda feed: {"logits": change(genuine(feed)["logits"])}, SPECS)


def noisy(logits: np.ndarray, share: float = 0.01) -> np.ndarray:
    """``logits`` with Gaussian noise of ``share`` of each position's standard deviation: weights quantized."""
    rng = np.random.default_rng(logits.shape[1])
    return logits + share * logits.std(-1, keepdims=True) * rng.normal(size=logits.shape).astype(np.float32)


def swap_top_two_but_last(logits: np.ndarray) -> np.ndarray:
    """The two best next tokens swapped at every position of the sequence but its last (which greedy decoding
    reads)."""
    out = logits.copy()
    order = np.argsort(-logits[0], axis=-1)
    rows = np.arange(logits.shape[1] - 1)
    out[0, rows, order[rows, 0]], out[0, rows, order[rows, 1]] = logits[0, rows, order[rows, 1]], \
        logits[0, rows, order[rows, 0]]
    return out


def stale_cache(model: LanguageModel) -> LanguageModel:
    """``model`` whose greedy continuation starts from a cache that lost the prompt's last token."""
    return LanguageModel(logits=model.logits,
                         greedy=lambda ids, mask, count: model.greedy(ids[:, :-1], mask[:, :-1], count))


def padding_let_in(genuine: RandomLM = GENUINE) -> LanguageModel:
    """``genuine`` that reads the left padding as tokens (a graph without position ids, or one that drops the mask)."""
    return forward_model(lambda feed: genuine({**feed, "attention_mask": np.ones_like(feed["attention_mask"])}),
                         SPECS)


def test_the_evaluation_sequences_are_fixed_sentence_long_int32_ids() -> None:
    assert IDS.dtype == np.int32 and IDS.shape[0] == SEQUENCES >= 32
    assert np.array_equal(IDS, evaluation_sequences(VOCAB))
    assert LENGTHS[0] <= LENGTHS_OF_IDS.min() and LENGTHS_OF_IDS.max() <= LENGTHS[1]
    assert len(set(LENGTHS_OF_IDS.tolist())) > 10  # natural-ish: many lengths
    for row, length in zip(IDS, LENGTHS_OF_IDS):
        assert (row[:length] >= 0).all() and (row[:length] < VOCAB).all() and (row[length:] == -1).all()
    positions = LENGTHS_OF_IDS.sum()
    assert WANT["top_ids"].shape == (positions, 64) and WANT["spread"].shape == (positions,)
    assert WANT["greedy"].shape == (SEQUENCES, GREEDY_TOKENS)


def test_sentences_go_through_the_tokenizer_cut_to_the_tokens_kept() -> None:
    tokenizer = zoo_tokenizer("gpt2", 1000)
    sentences = [sentence for sentence, _ in split("evaluation")][:SEQUENCES]
    ids = text_sequences(Tokenizer.from_str(tokenizer.decode()), sentences)
    lengths = (ids >= 0).sum(1)
    assert ids.dtype == np.int32 and ids.shape == (SEQUENCES, MAX_TOKENS) and lengths.max() == MAX_TOKENS
    first = Tokenizer.from_str(tokenizer.decode()).encode(sentences[0]).ids
    assert ids[0, :lengths[0]].tolist() == first[:MAX_TOKENS] and (ids[0, lengths[0]:] == -1).all()


def test_a_batch_is_left_padded_and_a_decoder_with_past_gets_it_over_an_empty_cache() -> None:
    ids, mask = left_padded([np.array([5, 6, 7]), np.array([8])])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    specs = [*SPECS, TensorSpec("position_ids", "int64", ("batch", "sequence")),
             TensorSpec("past_key_values.0.key", "float32", ("batch", 2, "past_sequence", 16))]
    feed = sequence_feed(specs, ids, mask)
    assert feed["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]] and feed["attention_mask"].tolist() == mask.tolist()
    assert feed["past_key_values.0.key"].shape == (2, 2, 0, 16)


def test_the_spread_is_the_log_probability_variance_with_the_rest_as_one_outcome() -> None:
    scores = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
    top = np.array([[0, 1]])
    rest_mean = np.log(0.125)
    mean = 0.5 * np.log(0.5) + 0.25 * np.log(0.25) + 0.25 * rest_mean
    want = 0.5 * (np.log(0.5) - mean) ** 2 + 0.25 * (np.log(0.25) - mean) ** 2 + 0.25 * (rest_mean - mean) ** 2
    assert spread(scores, top) == pytest.approx([want], rel=1e-12)


def test_the_relative_kl_does_not_grow_with_the_weights_the_absolute_kl_does() -> None:
    """The same 1 % noise, the zoo's weight scale against 10x: the absolute KL (which the bounds this replaced
    judged: mean <= 2e-7) grows 280x, the relative one 3x, and a temperature of 1.3 gives (1.3 - 1)^2 / 2 = 0.045
    of the spread at both, to second order (0.045 and 0.041)."""
    absolute, relative = [], []
    for scale in (1.0, 10.0):
        genuine = RandomLM(0, scale=scale)
        want = reference_view(forward_model(genuine, SPECS), IDS)
        got = artifact_view(planted(noisy, genuine), IDS, want)
        absolute.append(truncated_kl(want["top_logprobs"], got["at_top"]).mean())
        relative.append(judge_sequences("causal-lm", got, want, LENGTHS_OF_IDS, LM).measures["relative_kl"])
        hot = judged(planted(lambda x: x * 1.3, genuine), want)
        assert hot.measures["relative_kl"] == pytest.approx(0.3 ** 2 / 2, rel=0.15)
    assert absolute[1] > 100 * absolute[0] and relative[1] < 5 * relative[0]


@pytest.mark.parametrize("scale", [1.0, 10.0], ids=["zoo-scale", "10x-weights"])
def test_quantization_sized_noise_passes_and_a_temperature_fails_at_any_weight_scale(scale: float) -> None:
    genuine = RandomLM(0, scale=scale)
    want = reference_view(forward_model(genuine, SPECS), IDS)
    assert judged(planted(noisy, genuine), want).misses == []
    for temperature in (1.3, 0.7):
        misses = judged(planted(lambda x: x * temperature, genuine), want).misses
        assert len(misses) == 1 and misses[0].startswith("next-token KL(reference || artifact) 0.04"), misses


@pytest.mark.parametrize("model, criterion", [
    (planted(lambda x: x * 1.3), r"next-token KL\(reference \|\| artifact\) 0\.045\d* of the reference's "
                                 r"log-probability spread \(.*the largest KL after token \d+ of sequence \d+\) > "),
    (planted(lambda x: x * 0.7), r"next-token KL\(reference \|\| artifact\) 0\.04\d+ of the reference's "),
    (planted(swap_top_two_but_last), r"top-1 agreement 0\.\d+ \(\d+ of 536 next tokens changed\) < "),
    (stale_cache(forward_model(GENUINE, SPECS)), r"greedy agreement 0\.\d+ \(\d+ of 32 continuations of 8 tokens "
                                                 r"changed, first at token 0\) < "),
], ids=["logits-x1.3", "logits-x0.7", "top-two-swapped", "stale-cache"])
def test_each_plant_misses_one_criterion_only(model: LanguageModel, criterion: str) -> None:
    misses = judged(model).misses
    assert len(misses) == 1 and re.match(criterion, misses[0]), misses


def test_another_model_misses_every_criterion() -> None:
    misses = judged(forward_model(RandomLM(1), SPECS)).misses
    assert [m.split(" ")[0] for m in misses] == ["top-1", "next-token", "greedy"], misses


def test_a_model_that_lets_the_left_padding_in_fails() -> None:
    """The reference runs each sequence alone; the artifact's batches of BATCH are left-padded to their longest, so
    every sequence but the longest of its batch reads padding when the model ignores the mask."""
    assert BATCH > 1
    misses = judged(padding_let_in()).misses
    assert [m.split(" ")[0] for m in misses] == ["top-1", "next-token", "greedy"], misses


# --------------------------------------------------------------------------- the tiny GPT-2, end to end


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert("gpt2", output_dir=tmp_path_factory.mktemp("gpt2") / "onnx-fp32").artifact


def validated(artifact: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(artifact)])
    return result.exit_code, result.output


@pytest.mark.slow
def test_the_gpt2_artifact_carries_held_out_sentences_and_passes(gpt2: Path) -> None:
    manifest = Artifact.open(gpt2).manifest
    evaluation = manifest.evaluation
    assert manifest.input_names == ["input_ids", "attention_mask", "position_ids"]
    assert (evaluation["tokenizer"], evaluation["max_tokens"]) == ("tokenizer/tokenizer.json", MAX_TOKENS)
    assert json.loads((gpt2 / evaluation["texts"]).read_text()) == [s for s, _ in split("evaluation")][:SEQUENCES]
    code, output = validated(gpt2)
    assert code == 0, output
    assert "task agreement (causal-lm, 32 held-out sentences): agreement 100.0%" in output


@pytest.mark.slow
def test_logits_x1_3_planted_into_the_gpt2_graph_fail(gpt2: Path, tmp_path: Path) -> None:
    copy = tmp_path / "hot"
    shutil.copytree(gpt2, copy)
    model = onnx.load(copy / "model.onnx")
    producer = next(node for node in model.graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "unscaled_logits"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.3, np.float32), "temperature"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["unscaled_logits", "temperature"], ["logits"]))
    onnx.save(model, copy / "model.onnx")
    write_manifest(copy, Artifact.open(copy).manifest)  # re-hashed, as a bad copy would be
    code, output = validated(copy)
    assert code == 1, output
    assert re.search(r"task agreement: next-token KL\(reference \|\| artifact\) 0\.04\d+ of the reference's "
                     r"log-probability spread", output), output
