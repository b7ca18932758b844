"""Task agreement of encoder-decoder language models (edgeexport.validation.sequence_measures, seq2seq): teacher-forced
next tokens of (source, target) pairs, their KL relative to the reference's spread, and greedy continuations.

Fixed plants, sized without the thresholds, on a numpy encoder-decoder with random weights, each caught by one
criterion only: logits x1.3 and x0.7 (the KL), the top two next tokens swapped at every teacher-forced position
(top-1), greedy tokens from a source that lost its last token (greedy); another model misses all three; noise of 1 %
of the logits' spread passes. The feeds: a ``seq2seq-lm`` graph gets the source with the decoder ids, a bundle's
decoder the encoder's key/values over an empty cache; a tokenizer's pairs are held-out sentences after the
decoder-start token, and golden cases are sentences too. Then the tiny BART and T5 bundles end to end (slow): they
pass on their held-out sentence pairs, logits x1.3 planted into the decoder's graph fail with the KL line, and
single sentences where pairs belong are one line.
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
from typer.testing import CliRunner

from edgeexport.artifact import Artifact, write_manifest
from edgeexport.bundle import Bundle, write_bundle
from edgeexport.cli import app
from edgeexport.conversion import convert
from edgeexport.manifest import GoldenFile, TensorSpec
from edgeexport.validation.agreement import CRITERIA, Agreement, judge_sequences
from edgeexport.reference.processors import zoo_tokenizer
from edgeexport.reference.sentences import split
from edgeexport.validation.sequence_measures import (GREEDY_TOKENS, MAX_TOKENS, SEQUENCES, TARGET_SEED, Seq2SeqModel,
                                                     SentencePairs, artifact_view, evaluation_sequences,
                                                     reference_view, seq2seq_components, seq2seq_graph, seq2seq_model,
                                                     seq2seq_sequences, text_sequences)

VOCAB = 300
START = 2
PAIRS = seq2seq_sequences(VOCAB, START)
SOURCES, DECODER_IDS = PAIRS["ids"], PAIRS["decoder_ids"]
POSITIONS = (DECODER_IDS >= 0).sum(1)


class RandomSeq2Seq:
    """An encoder-decoder with random weights in numpy: a decoder position's state is the running mean of the
    decoder's token embeddings so far plus the mean of the source's; its logits spread about as little as the tiny
    BART's."""

    def __init__(self, seed: int, width: int = 16) -> None:
        rng = np.random.default_rng(seed)
        self.source_embed, self.target_embed = rng.normal(size=(2, VOCAB, width))
        self.head = rng.normal(size=(width, VOCAB)) * 0.5 / np.sqrt(width)

    def __call__(self, source: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        states = np.cumsum(self.target_embed[decoder_ids[0]], axis=0) / np.arange(1, decoder_ids.shape[1] + 1)[:, None]
        return (np.tanh(states + self.source_embed[source[0]].mean(0)) @ self.head).astype(np.float32)


GENUINE = RandomSeq2Seq(0)
WANT = reference_view(seq2seq_model(GENUINE, START), SOURCES, decoder_ids=DECODER_IDS)


def judged(model: Seq2SeqModel) -> Agreement:
    got = artifact_view(model, SOURCES, WANT, decoder_ids=DECODER_IDS)
    return judge_sequences("seq2seq-lm-with-past", got, WANT, POSITIONS, CRITERIA["seq2seq-lm-with-past"])


def planted(change: Callable[[np.ndarray], np.ndarray]) -> Seq2SeqModel:
    return seq2seq_model(lambda source, decoder_ids: change(GENUINE(source, decoder_ids)), START)


def noisy(logits: np.ndarray) -> np.ndarray:
    """``logits`` with Gaussian noise of 1 % of each position's standard deviation: weights quantized."""
    rng = np.random.default_rng(logits.shape[0])
    return logits + 0.01 * logits.std(-1, keepdims=True) * rng.normal(size=logits.shape).astype(np.float32)


def swap_top_two(logits: np.ndarray) -> np.ndarray:
    out = logits.copy()
    order = np.argsort(-logits, axis=-1)
    rows = np.arange(len(logits))
    out[rows, order[:, 0]], out[rows, order[:, 1]] = logits[rows, order[:, 1]], logits[rows, order[:, 0]]
    return out


def test_the_pairs_are_fixed_sources_and_targets_after_the_decoder_start_token() -> None:
    assert SOURCES.dtype == DECODER_IDS.dtype == np.int32 and len(SOURCES) == len(DECODER_IDS) == SEQUENCES
    assert np.array_equal(SOURCES, evaluation_sequences(VOCAB))
    assert (DECODER_IDS[:, 0] == START).all()
    assert np.array_equal(DECODER_IDS[:, 1:], evaluation_sequences(VOCAB, seed=TARGET_SEED))
    assert not np.array_equal(DECODER_IDS[:, 1:1 + SOURCES.shape[1]], SOURCES[:, :DECODER_IDS.shape[1] - 1])
    assert WANT["top_ids"].shape == (POSITIONS.sum(), 64) and WANT["greedy"].shape == (SEQUENCES, GREEDY_TOKENS)


def test_sentence_pairs_are_sources_and_targets_through_the_tokenizer_after_the_decoder_start_token() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(zoo_tokenizer("bart", 1000).decode())
    pairs = SentencePairs([("A cold wind blew from the north all night.", "The wind picked up after dark."),
                           ("Snow fell.", "It rained on and off all day, and the football pitch turned to mud.")], 2)
    sequences = pairs.token_ids(tokenizer, max_tokens=12)
    sources, targets = sequences["ids"], sequences["decoder_ids"]
    assert np.array_equal(sources, text_sequences(tokenizer, ["A cold wind blew from the north all night.",
                                                              "Snow fell."], 12))
    assert tokenizer.decode(sources[1][sources[1] >= 0].tolist(), skip_special_tokens=False) == "<s>Snow fell.</s>"
    assert targets[:, 0].tolist() == [2, 2]
    assert np.array_equal(targets[:, 1:], text_sequences(tokenizer, [target for _, target in pairs.pairs], 12))
    assert (targets[1] >= 0).sum() == 1 + 12  # the long target cut to the tokens kept
    assert tokenizer.decode(targets[0, 1:][targets[0, 1:] >= 0].tolist(), skip_special_tokens=False) == \
        "<s>The wind picked up after dark.</s>"


@pytest.mark.parametrize("name, start", [("bart", 2), ("t5", 0)])
def test_golden_sources_and_targets_are_sentences_of_the_golden_split(name: str, start: int) -> None:
    """The graph's golden case: sources the golden split's sentences (masked, right-padded), decoder ids the
    decoder-start token and the sentence half the split away, cut to the case; the bundle's encoder the same
    sources."""
    from edgeexport.reference import load_reference

    golden = [sentence for sentence, _ in split("golden")]
    graph = load_reference(name, task="seq2seq-lm")
    tokenizer = graph.input_source.load()
    inputs = graph.make_inputs(seed=0)
    for row, (ids, mask, decoder) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"],
                                                   inputs["decoder_input_ids"])):
        assert golden[row].startswith(tokenizer.decode(ids[mask == 1].tolist()).strip())
        assert decoder[0] == start and len(decoder) == 5
        assert golden[row + len(golden) // 2].startswith(tokenizer.decode(decoder[1:].tolist()).strip())
    encoder = load_reference(name, task="seq2seq-lm-with-past").components["encoder"].make_inputs(seed=0)
    assert np.array_equal(encoder["input_ids"], inputs["input_ids"])


def test_greedy_tokens_follow_the_decoder_start_token_as_argmaxes() -> None:
    source = SOURCES[:1, :SOURCES[0].tolist().index(-1) if -1 in SOURCES[0] else None].astype(np.int64)
    tokens = seq2seq_model(GENUINE, START).greedy(source, 3)
    first = GENUINE(source, np.array([[START]]))[-1].argmax()
    second = GENUINE(source, np.array([[START, first]]))[-1].argmax()
    assert tokens.tolist()[:2] == [first, second]


def test_a_seq2seq_graph_gets_the_source_its_mask_and_the_decoder_ids() -> None:
    feeds = []
    specs = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
             TensorSpec("attention_mask", "int64", ("batch", "sequence")),
             TensorSpec("decoder_input_ids", "int64", ("batch", "decoder_sequence"))]
    logits = seq2seq_graph(lambda feed: feeds.append(feed) or {"logits": np.zeros((1, 2, 5))}, specs)
    assert logits(np.array([[7, 8, 9]]), np.array([[START, 4]])).shape == (2, 5)
    assert {name: value.tolist() for name, value in feeds[0].items()} == {
        "input_ids": [[7, 8, 9]], "attention_mask": [[1, 1, 1]], "decoder_input_ids": [[START, 4]]}


def test_a_bundle_decoder_gets_the_encoder_key_values_over_an_empty_cache() -> None:
    cross = np.ones((1, 2, 3, 4), np.float32)
    feeds = []
    specs = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
             TensorSpec("encoder_attention_mask", "int64", ("batch", "encoder_sequence")),
             TensorSpec("past_key_values.0.key", "float32", ("batch", 2, "past_sequence", 4)),
             TensorSpec("encoder_key_values.0.key", "float32", ("batch", 2, "encoder_sequence", 4))]
    logits = seq2seq_components(lambda feed: {"encoder_key_values.0.key": cross},
                                lambda feed: feeds.append(feed) or {"logits": np.zeros((1, 2, 5))}, specs)
    logits(np.array([[7, 8, 9]]), np.array([[START, 4]]))
    feed = feeds[0]
    assert feed["input_ids"].tolist() == [[START, 4]] and feed["encoder_attention_mask"].tolist() == [[1, 1, 1]]
    assert feed["past_key_values.0.key"].shape == (1, 2, 0, 4) and feed["encoder_key_values.0.key"] is not None
    assert np.array_equal(feed["encoder_key_values.0.key"], cross)


def test_quantization_sized_noise_passes() -> None:
    assert judged(planted(noisy)).misses == []


@pytest.mark.parametrize("model, criterion", [
    (planted(lambda x: x * 1.3), r"next-token KL\(reference \|\| artifact\) 0\.04\d* of the reference's "),
    (planted(lambda x: x * 0.7), r"next-token KL\(reference \|\| artifact\) 0\.04\d* of the reference's "),
    (Seq2SeqModel(logits=lambda source, decoder_ids: swap_top_two(GENUINE(source, decoder_ids)),
                   greedy=seq2seq_model(GENUINE, START).greedy),
     rf"top-1 agreement 0\.000 \({POSITIONS.sum()} of {POSITIONS.sum()} next tokens changed\) < "),
    (Seq2SeqModel(logits=GENUINE, greedy=lambda source, count: seq2seq_model(GENUINE, START).greedy(source[:, :-1],
                                                                                                      count)),
     r"greedy agreement 0\.\d+ \(\d+ of 32 continuations of 8 tokens changed, first at token \d\) < "),
], ids=["logits-x1.3", "logits-x0.7", "top-two-swapped", "source-lost-its-last-token"])
def test_each_plant_misses_one_criterion_only(model: Seq2SeqModel, criterion: str) -> None:
    misses = judged(model).misses
    assert len(misses) == 1 and re.match(criterion, misses[0]), misses


def test_another_model_misses_every_criterion() -> None:
    misses = judged(seq2seq_model(RandomSeq2Seq(1), START)).misses
    assert [m.split(" ")[0] for m in misses] == ["top-1", "next-token", "greedy"], misses


# --------------------------------------------------------------------------- the tiny BART and T5, end to end


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seq2seq")
    return {name: convert(name, task="seq2seq-lm-with-past", output_dir=root / name, validate=False).artifact
            for name in ("bart", "t5")}


def validated(artifact: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(artifact)])
    return result.exit_code, result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bart", "t5"])
def test_the_bundle_carries_its_pairs_and_passes_with_both_runners(bundles: dict[str, Path], name: str) -> None:
    decoder = Artifact.open(bundles[name] / "decoder")
    evaluation = decoder.manifest.evaluation
    sentences = [sentence for sentence, _ in split("evaluation")]
    pairs = json.loads(decoder.file(evaluation["texts"]).read_text())
    assert pairs == [list(pair) for pair in zip(sentences[:SEQUENCES], sentences[SEQUENCES:2 * SEQUENCES])]
    assert (evaluation["tokenizer"], evaluation["max_tokens"]) == ("tokenizer/tokenizer.json", MAX_TOKENS)
    assert evaluation["decoder_start"] == decoder.manifest.generation["tokens"]["decoder_start"]
    assert "sequences" not in evaluation and not Artifact.open(bundles[name] / "encoder").manifest.evaluation
    code, output = validated(bundles[name])
    assert code == 0, output
    assert re.search(r"task agreement \(seq2seq-lm-with-past, 32 held-out sentence pairs\): agreement 100\.0%, "
                     r"relative kl [\d.e-]+, greedy agreement 1,", output), output
    code, output = validated(bundles[name] / "decoder")  # the decoder alone has no encoder to judge its pairs with
    assert code == 0 and "task agreement" not in output, output


def rehashed(bundle: Path) -> None:
    """The bundle's decoder manifest and ``bundle.json`` re-hashed after a change, as a bad copy would be."""
    write_manifest(bundle / "decoder", Artifact.open(bundle / "decoder").manifest)
    opened = Bundle.open(bundle)
    write_bundle(bundle, list(opened.components), opened.model)


@pytest.mark.slow
def test_forced_first_and_last_tokens_are_off_in_the_greedy_tokens(bundles: dict[str, Path], tmp_path: Path) -> None:
    """BART's generation config forces EOS (2) as the last token, which the zoo's BART repeats anyway; forcing
    another token first and last changes every greedy continuation where generation applies it, and must not
    change the evaluation's."""
    copy = tmp_path / "forced"
    shutil.copytree(bundles["bart"], copy)
    manifest_file = copy / "decoder" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["generation"]["tokens"]["forced_eos"] == 2
    manifest["generation"]["tokens"].update(forced_bos=7, forced_eos=7)
    manifest_file.write_text(json.dumps(manifest))
    rehashed(copy)
    decoder = Artifact.open(copy / "decoder")
    want = decoder.read_tensors(GoldenFile.from_dict(decoder.manifest.evaluation["reference"], "r"))
    assert not (want["greedy"][:, [0, -1]] == 7).any()
    code, output = validated(copy)
    assert code == 0 and "greedy agreement 1," in output, output


@pytest.mark.slow
def test_logits_x1_3_planted_into_the_decoder_graph_fail(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "hot"
    shutil.copytree(bundles["bart"], copy)
    model = onnx.load(copy / "decoder" / "model.onnx")
    producer = next(node for node in model.graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "unscaled_logits"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.3, np.float32), "temperature"))
    model.graph.node.append(onnx.helper.make_node("Mul", ["unscaled_logits", "temperature"], ["logits"]))
    onnx.save(model, copy / "decoder" / "model.onnx")
    rehashed(copy)
    code, output = validated(copy)
    assert code == 1, output
    assert re.search(r"task agreement: next-token KL\(reference \|\| artifact\) 0\.04\d+ of the reference's "
                     r"log-probability spread", output), output


@pytest.mark.slow
def test_sentences_where_pairs_belong_are_one_line(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "sentences"
    shutil.copytree(bundles["t5"], copy)
    texts = copy / "decoder" / "evaluation" / "texts.json"
    texts.write_text(json.dumps([source for source, _ in json.loads(texts.read_text())]))
    rehashed(copy)
    code, output = validated(copy)
    assert code == 2
    assert output.strip() == ("error: evaluation texts 'evaluation/texts.json' of an encoder-decoder must be "
                              "[source, target] pairs with evaluation.decoder_start; re-run convert")
