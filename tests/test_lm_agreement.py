"""Task agreement of language models (edgeexport.validation.sequence_measures): teacher-forced next tokens, their KL
and greedy continuations over token-id sequences.

Fixed plants, independent of the thresholds, on a numpy language model with random weights (near-uniform
next-token probabilities, as the zoo's): logits x1.3, two vocabulary rows swapped, another model (seed); each
fails, the genuine outputs with fp32-sized noise pass, and near ties flipped by noise do not count. Then the tiny
GPT-2 end to end (slow): its ONNX artifact passes on its evaluation sequences, and logits x1.3 planted into its
graph fail.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.cli import app
from edgeexport.conversion import convert
from edgeexport.manifest import GoldenFile, TensorSpec
from edgeexport.validation.agreement import CRITERIA, judge_sequences
from edgeexport.validation.sequence_measures import (GREEDY_TOKENS, LENGTHS, SEQUENCES, artifact_view,
                                                     evaluation_sequences, forward_model, reference_view,
                                                     sequence_feed)

LM = CRITERIA["causal-lm"]
VOCAB = 300
SPECS = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
         TensorSpec("attention_mask", "int64", ("batch", "sequence"))]
IDS = evaluation_sequences(VOCAB)
LENGTHS_OF_IDS = (IDS >= 0).sum(1)


class RandomLM:
    """A language model with random weights in numpy: each position's state is a running mean of the token
    embeddings so far; its logits spread about as little as the tiny GPT-2's."""

    def __init__(self, seed: int, width: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.embed = rng.normal(size=(VOCAB, width))
        self.head = rng.normal(size=(width, VOCAB)) * 0.5 / np.sqrt(width)

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        states = np.cumsum(self.embed[feed["input_ids"]], axis=1)
        states /= np.arange(1, states.shape[1] + 1)[None, :, None]
        return {"logits": (np.tanh(states) @ self.head).astype(np.float32)}


GENUINE = RandomLM(0)
WANT = reference_view(forward_model(GENUINE, SPECS), IDS)


def judged(run, criteria=LM) -> list[str]:
    got = artifact_view(forward_model(run, SPECS), IDS, WANT)
    return judge_sequences("causal-lm", got, WANT, LENGTHS_OF_IDS, criteria).misses


def planted(change):
    return lambda feed: {"logits": change(GENUINE(feed)["logits"])}


def swap_rows(logits: np.ndarray, a: int, b: int) -> np.ndarray:
    out = logits.copy()
    out[..., [a, b]] = logits[..., [b, a]]
    return out


# The reference's most frequent top-1 token and its runner-up: the rows a swapped head would matter most for.
COMMON = [int(t) for t in np.bincount(WANT["top_ids"][:, 0], minlength=VOCAB).argsort()[::-1][:2]]


def test_the_evaluation_sequences_are_fixed_sentence_long_int32_ids() -> None:
    assert IDS.dtype == np.int32 and IDS.shape[0] == SEQUENCES >= 32
    assert np.array_equal(IDS, evaluation_sequences(VOCAB))
    assert LENGTHS[0] <= LENGTHS_OF_IDS.min() and LENGTHS_OF_IDS.max() <= LENGTHS[1]
    assert len(set(LENGTHS_OF_IDS.tolist())) > 10  # natural-ish: many lengths
    for row, length in zip(IDS, LENGTHS_OF_IDS):
        assert (row[:length] >= 0).all() and (row[:length] < VOCAB).all() and (row[length:] == -1).all()
    assert WANT["top_ids"].shape == (LENGTHS_OF_IDS.sum(), 64) and WANT["greedy"].shape == (SEQUENCES, GREEDY_TOKENS)


def test_a_decoder_with_past_gets_the_whole_sequence_over_an_empty_cache() -> None:
    specs = [*SPECS, TensorSpec("position_ids", "int64", ("batch", "sequence")),
             TensorSpec("past_key_values.0.key", "float32", ("batch", 2, "past_sequence", 16))]
    feed = sequence_feed(specs, np.array([[5, 6, 7]]))
    assert feed["position_ids"].tolist() == [[0, 1, 2]] and feed["attention_mask"].tolist() == [[1, 1, 1]]
    assert feed["past_key_values.0.key"].shape == (1, 2, 0, 16)


def test_the_genuine_outputs_with_fp32_noise_pass() -> None:
    noise = np.random.default_rng(1)
    assert judged(planted(lambda x: x + noise.normal(scale=1e-6, size=x.shape).astype(np.float32))) == []


@pytest.mark.parametrize("change, miss", [
    (lambda x: x * 1.3, r"next-token KL\(reference \|\| artifact\) 0\.0\d+ after token \d+ of sequence \d+ > "),
    (lambda x: swap_rows(x, *COMMON), r"top-1 agreement 0\.\d+ \(\d+ of \d+ next tokens"),
], ids=["logits-x1.3", "two-rows-swapped"])
def test_planted_logits_fail(change, miss) -> None:
    misses = judged(planted(change))
    assert misses and re.match(miss, misses[0]), misses


def test_another_model_fails_every_criterion() -> None:
    misses = judged(RandomLM(1))
    assert [m.split(" ")[0] for m in misses] == ["top-1", "next-token", "mean", "greedy"], misses


def test_only_the_kl_catches_a_temperature_top_1_and_greedy_stay() -> None:
    got = artifact_view(forward_model(planted(lambda x: x * 1.3), SPECS), IDS, WANT)
    result = judge_sequences("causal-lm", got, WANT, LENGTHS_OF_IDS, LM)
    assert result.measures["agreement"] == 1.0 and result.measures["greedy_agreement"] == 1.0
    assert result.misses and all("KL" in miss for miss in result.misses)
    assert judged(planted(lambda x: x * 1.3), replace(LM, max_kl=None, max_mean_kl=None)) == []


def test_near_ties_flipped_by_noise_do_not_count() -> None:
    """Every position whose reference top-1 leads its top-2 by less than the margin (here 0.01, wider than the
    criteria's 1e-5, which this model's gaps never come under) gets the two swapped: top-1 agreement counts only
    the positions the reference decides, and with no margin the same flips fail."""
    margin = 0.01

    def flip_near_ties(x: np.ndarray) -> np.ndarray:
        scores = x[0].astype(np.float64)
        order = np.argsort(-scores, axis=-1)
        rows = np.arange(len(scores))
        near = rows[scores[rows, order[:, 0]] - scores[rows, order[:, 1]] < margin]
        out = x.copy()
        out[0, near, order[near, 0]], out[0, near, order[near, 1]] = x[0, near, order[near, 1]], x[0, near, order[near, 0]]
        return out

    got = artifact_view(forward_model(planted(flip_near_ties), SPECS), IDS, WANT)
    assert int((got["top1"] != WANT["top_ids"][:, 0]).sum()) > 0
    lenient = replace(LM, top1_margin=margin, min_greedy_agreement=0.0, max_kl=None, max_mean_kl=None)
    assert judge_sequences("causal-lm", got, WANT, LENGTHS_OF_IDS, lenient).measures["agreement"] == 1.0
    misses = judge_sequences("causal-lm", got, WANT, LENGTHS_OF_IDS, replace(lenient, top1_margin=0.0)).misses
    assert len(misses) == 1 and misses[0].startswith("top-1 agreement"), misses


# --------------------------------------------------------------------------- the tiny GPT-2, end to end


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert("gpt2", output_dir=tmp_path_factory.mktemp("gpt2") / "onnx-fp32").artifact


def validated(artifact: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(artifact)])
    return result.exit_code, result.output


@pytest.mark.slow
def test_the_gpt2_artifact_carries_random_token_sequences_and_passes(gpt2: Path) -> None:
    artifact = Artifact.open(gpt2)
    manifest = artifact.manifest
    assert manifest.model["inputs"] == "random"
    ids = artifact.read_tensors(GoldenFile.from_dict(manifest.evaluation["sequences"], "s"))["ids"]
    assert np.array_equal(ids, evaluation_sequences(1000))
    code, output = validated(gpt2)
    assert code == 0, output
    assert "task agreement (causal-lm, 32 held-out token sequences): agreement 100.0%" in output


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
    assert re.search(r"task agreement: next-token KL\(reference \|\| artifact\) \d\.\d+ after token \d+ of sequence "
                     r"\d+ > ", output), output
