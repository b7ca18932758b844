"""Task agreement of language models: teacher-forced next-token distributions and greedy continuations.

The evaluation set is 32 held-out English sentences (:data:`SEQUENCES`) through the artifact's own tokenizer, each cut
to :data:`MAX_TOKENS` (:func:`text_sequences`); a model without a tokenizer gets 32 sequences of token ids drawn
uniformly from the vocabulary with a fixed seed (:data:`EVALUATION_SEED`, away from the golden, calibration and fresh
seeds), each as long as a sentence (:data:`LENGTHS`). Both are int32 ids with -1 after each end. The artifact also
carries PyTorch's view of them, each sequence run alone, kept small whatever the vocabulary (:func:`reference_view`):
at every position the top :data:`TOP_K` next tokens with their log-probabilities and the spread of its
log-probabilities (:func:`spread`), and the :data:`GREEDY_TOKENS` greedy tokens that follow each whole sequence.

The artifact runs them as a server batches them (:func:`artifact_view`): :data:`BATCH` sequences a call, left-padded
to the longest with an attention mask and position ids that skip the padding, as its own runtime runs them
(:func:`forward_model` for a graph of whole sequences, and the decoder with its cache as its generator runs it: the
prompt's first step over an empty cache, then :meth:`edgeexport.generator.Generator.generate` for the greedy
tokens, :func:`generator_model`). A model that lets the padding change the real tokens' next-token scores misses
here. :func:`sequence_measures` compares, over every position of every sequence:

- ``agreement``: the share of positions whose top-1 next token is the reference's;
- ``relative_kl``: KL(reference || artifact) of the next-token distributions, summed over the positions, over the
  reference's log-probability spread summed likewise (:func:`spread`). Both are taken over the reference's top-K
  tokens and the rest of the vocabulary as one outcome (merging outcomes never raises a KL, so the KL is a lower
  bound of the full one; a temperature or swapped tokens move the top-K). The ratio does not depend on the scale of
  the logits: a temperature ``T`` gives about ``(T - 1)**2 / 2`` whatever the model, where the absolute KL of the
  same precision grows 900-11000x from a GPT-2 with the zoo's weights to one with weights 10x larger;
- ``greedy_agreement``: the share of sequences whose greedy continuation is the reference's, token for token, and
  ``first_divergence``: the mean index of the first differing token (:data:`GREEDY_TOKENS` where none differs).

Encoder-decoder models (:data:`SEQ2SEQ_TASKS`) are judged the same way over pairs: 32 held-out source sentences (the
encoder's input, the evaluation split's first 32) and 32 target sentences (its next 32), both through the artifact's
tokenizer (:class:`SentencePairs`; without a tokenizer, seeded random sources and targets, seeds
:data:`EVALUATION_SEED` and :data:`TARGET_SEED`, :func:`seq2seq_sequences`), the decoder teacher-forced on the
decoder-start token followed by the target (``decoder_ids``), its positions those of the measures; the greedy tokens
follow the decoder-start token of each source. The reference and
a ``seq2seq-lm`` graph run whole sequences (:func:`seq2seq_graph`, :func:`seq2seq_components`,
:func:`seq2seq_model`), a ``seq2seq-lm-with-past`` bundle runs as its generator runs it
(:func:`seq2seq_generator_model`), each pair alone (:class:`Seq2SeqModel`).

The thresholds are derived in docs/parity.md ("Language models"). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special

from edgeexport.errors import ArtifactError
from edgeexport.generation_spec import empty_past_shape
from edgeexport.processing import encode_texts, position_ids

if TYPE_CHECKING:
    from edgeexport.generator import Generator
    from edgeexport.manifest import TensorSpec
    from edgeexport.validation.agreement import Criteria

LM_TASKS = ("causal-lm", "causal-lm-with-past")
SEQ2SEQ_TASKS = ("seq2seq-lm", "seq2seq-lm-with-past")
SEQUENCES = 32
EVALUATION_SEED = 2000  # away from the golden (0, 1), calibration (500+) and fresh (1000+) seeds
TARGET_SEED = 2001  # an encoder-decoder's targets (its sources: EVALUATION_SEED)
LENGTHS = (6, 30)  # tokens of a sequence, drawn uniformly: about a sentence's
MAX_TOKENS = 30  # a sentence's tokens kept: TensorRT's profile goes to 4x the tiny presets' 8 tokens
BATCH = 4  # sequences a call: TensorRT's profile goes to 4x the golden example's batch (1 at full size)
GREEDY_TOKENS = 8
TOP_K = 64
PAST_PREFIX = "past_key_values."

Forward = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
Seq2SeqLogits = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (source, decoder ids) -> (decoder length, vocab)


@dataclass(frozen=True)
class LanguageModel:
    """How the evaluation runs a model on a batch of left-padded sequences ``ids`` ``(batch, length)`` with their
    attention ``mask`` (0 on the padding): ``logits(ids, mask)`` of every position ``(batch, length, vocab)``, and
    ``greedy(ids, mask, n)``: the ``n`` tokens greedy decoding adds after each ``(batch, n)``."""

    logits: Callable[[np.ndarray, np.ndarray], np.ndarray]
    greedy: Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Seq2SeqModel:
    """How the evaluation runs an encoder-decoder on one source ``(1, length)``: ``logits(source, decoder_ids)``, the
    decoder's ``(decoder length, vocab)`` teacher-forced on ``decoder_ids`` ``(1, decoder length)`` over the encoded
    source, and ``greedy(source, n)``: the ``n`` tokens greedy decoding adds after the decoder-start token."""

    logits: Seq2SeqLogits
    greedy: Callable[[np.ndarray, int], np.ndarray]


def evaluation_sequences(vocab_size: int, *, count: int = SEQUENCES, seed: int = EVALUATION_SEED) -> np.ndarray:
    """``(count, longest)`` int32 token ids below ``vocab_size``, each row as long as a length drawn from
    :data:`LENGTHS`, -1 after its end."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(LENGTHS[0], LENGTHS[1] + 1, size=count)
    ids = np.full((count, int(lengths.max())), -1, dtype=np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(0, vocab_size, size=length)
    return ids


def text_sequences(tokenizer: Any, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """``(len(texts), longest)`` int32 ids of ``texts`` through ``tokenizer`` (its special tokens, each text cut to
    ``max_tokens``), -1 after each end."""
    encoded = encode_texts(tokenizer, texts, max_tokens)
    return np.where(encoded["attention_mask"] == 1, encoded["input_ids"], -1).astype(np.int32)


def sequence_rows(ids: np.ndarray) -> list[np.ndarray]:
    """Each sequence of :func:`evaluation_sequences` or :func:`text_sequences` alone, ``(length,)`` int64."""
    return [row[row >= 0].astype(np.int64) for row in ids]


def seq2seq_sequences(vocab_size: int, decoder_start: int) -> dict[str, np.ndarray]:
    """An encoder-decoder's evaluation pairs without a tokenizer: ``ids``, the sources (:func:`evaluation_sequences`),
    and ``decoder_ids``, the decoder-start token followed by a target (seed :data:`TARGET_SEED`), -1 after each end."""
    return {"ids": evaluation_sequences(vocab_size),
            "decoder_ids": _after_start(evaluation_sequences(vocab_size, seed=TARGET_SEED), decoder_start)}


@dataclass(frozen=True)
class SentencePairs:
    """An encoder-decoder's evaluation as text: (source, target) sentence pairs, which the artifact keeps as they
    are and its tokenizer turns into ids on the device, and the decoder-start token the decoder ids begin with."""

    pairs: list[tuple[str, str]]
    decoder_start: int

    def token_ids(self, tokenizer: Any, max_tokens: int = MAX_TOKENS) -> dict[str, np.ndarray]:
        """``ids``, the sources through ``tokenizer`` (:func:`text_sequences`), and ``decoder_ids``, the
        decoder-start token followed by a target through it (its special tokens too, as a model's labels are)."""
        sources = text_sequences(tokenizer, [source for source, _ in self.pairs], max_tokens)
        targets = text_sequences(tokenizer, [target for _, target in self.pairs], max_tokens)
        return {"ids": sources, "decoder_ids": _after_start(targets, self.decoder_start)}


def _after_start(targets: np.ndarray, decoder_start: int) -> np.ndarray:
    """``targets`` (-1 after each end) each after the decoder-start token."""
    start = np.full((len(targets), 1), decoder_start, dtype=np.int32)
    return np.concatenate([start, targets], axis=1)


def left_padded(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` of token ids as one batch left-padded to the longest (pad id 0, hidden by the mask), and its
    attention mask."""
    longest = max(len(row) for row in rows)
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, longest - len(row):] = row
        mask[index, longest - len(row):] = 1
    return ids, mask


def sequence_feed(specs: Sequence[TensorSpec], ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs of whole left-padded sequences ``(batch, length)`` as the first step of generation gives them: the
    ids, their mask, positions 0, 1, ... over the real tokens where the model takes them, and an empty cache (past
    length 0).

    Raises:
        ArtifactError: an input a language model's evaluation cannot fill.
    """
    given = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}
    feed = {}
    for spec in specs:
        if spec.name in given:
            feed[spec.name] = given[spec.name].astype(spec.dtype)
        elif spec.name.startswith(PAST_PREFIX) and len(spec.shape) == 4:
            feed[spec.name] = np.zeros(empty_past_shape(spec.shape, len(ids)), dtype=spec.dtype)
        else:
            raise ArtifactError(f"input {spec.name!r} cannot be filled from token ids; a language model's evaluation "
                                "takes input_ids, attention_mask, position_ids and past key/values")
    return feed


def forward_model(run: Forward, specs: Sequence[TensorSpec]) -> LanguageModel:
    """A graph run on whole sequences (``causal-lm``, and PyTorch's reference of either task); its greedy
    tokens run the grown sequence again for each (no cache)."""
    def logits(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(run(sequence_feed(specs, ids, mask))["logits"], dtype=np.float32)

    def greedy(ids: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
        for _ in range(count):
            chosen = logits(ids, mask)[:, -1].argmax(-1)
            ids = np.concatenate([ids, chosen[:, None]], axis=1)
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
        return ids[:, ids.shape[1] - count:]

    return LanguageModel(logits=logits, greedy=greedy)


def generator_model(generator: Generator) -> LanguageModel:
    """A decoder with its cache (``causal-lm-with-past``) as its generator runs it: the logits of the prompt's
    first step (the generator's own first feed over an empty cache, :meth:`Generator.first_feed`, through the
    runner's ``step`` call as the generator makes it: OpenVINO's checked call cannot take an empty cache after a
    longer one), and :meth:`Generator.generate`'s greedy tokens with every
    logits rule off and no end of sequence, so that they are the argmax of each step's logits, as the reference's
    are."""
    def logits(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = generator.first_feed(ids, mask, native_cache=False)
        return np.asarray(generator.decoder.step(feed)["logits"], dtype=np.float32)

    def greedy(ids: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
        output = generator.generate(ids, mask, eos_token_id=(), max_new_tokens=count, min_new_tokens=0, num_beams=1,
                                    do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0)
        return output.tokens

    return LanguageModel(logits=logits, greedy=greedy)


def seq2seq_model(logits: Seq2SeqLogits, decoder_start: int) -> Seq2SeqModel:
    """An encoder-decoder run on whole decoder sequences (PyTorch's reference, a ``seq2seq-lm`` graph): its greedy
    tokens run the grown decoder sequence again for each (no cache), from ``decoder_start``."""
    def greedy(source: np.ndarray, count: int) -> np.ndarray:
        decoder = np.array([[decoder_start]], dtype=np.int64)
        for _ in range(count):
            decoder = np.concatenate([decoder, [[int(logits(source, decoder)[-1].argmax())]]], axis=1)
        return decoder[0, 1:]

    return Seq2SeqModel(logits=logits, greedy=greedy)


def seq2seq_graph(run: Forward, specs: Sequence[TensorSpec]) -> Seq2SeqLogits:
    """The logits of a ``seq2seq-lm`` graph (``input_ids``, ``attention_mask``, ``decoder_input_ids``)."""
    dtypes = {spec.name: spec.dtype for spec in specs}

    def logits(source: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        feed = {"input_ids": source, "attention_mask": np.ones_like(source), "decoder_input_ids": decoder_ids}
        return np.asarray(run({name: feed[name].astype(dtypes[name]) for name in dtypes})["logits"][0], np.float32)

    return logits


def seq2seq_components(encoder: Forward, decoder: Forward, decoder_specs: Sequence[TensorSpec]) -> Seq2SeqLogits:
    """The logits of an encoder and a decoder with a cache (``seq2seq-lm-with-past``, PyTorch's components): the
    encoder's cross-attention key/values, then the decoder on the whole decoder sequence over an empty cache."""
    def logits(source: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        cross = encoder({"input_ids": source, "attention_mask": np.ones_like(source)})
        given = {**cross, "input_ids": decoder_ids, "encoder_attention_mask": np.ones_like(source)}
        feed = {spec.name: np.asarray(given[spec.name]).astype(spec.dtype) if spec.name in given else
                np.zeros(empty_past_shape(spec.shape, 1), dtype=spec.dtype) for spec in decoder_specs}
        return np.asarray(decoder(feed)["logits"][0], dtype=np.float32)

    return logits


def seq2seq_generator_model(generator: Generator) -> Seq2SeqModel:
    """An encoder-decoder bundle as its generator runs it: the logits of its first feed (the encoder run on the
    source, an empty cache) with the decoder ids as ``input_ids``, and :meth:`Generator.generate`'s greedy tokens
    with every logits rule off, no end of sequence, and no forced first or last token (``forced_bos``,
    ``forced_eos``: BART forces the last), so that they are the argmax of each step's logits."""
    generator.spec = replace(generator.spec, tokens=replace(generator.spec.tokens, forced_bos=None, forced_eos=None))

    def logits(source: np.ndarray, decoder_ids: np.ndarray) -> np.ndarray:
        feed = {**generator.first_feed(source, np.ones_like(source), native_cache=False), "input_ids": decoder_ids}
        return np.asarray(generator.decoder.step(feed)["logits"][0], dtype=np.float32)

    batched = generator_model(generator).greedy

    def greedy(source: np.ndarray, count: int) -> np.ndarray:
        return batched(source, np.ones_like(source), count)[0]

    return Seq2SeqModel(logits=logits, greedy=greedy)


def reference_view(model: LanguageModel | Seq2SeqModel, ids: np.ndarray, *, decoder_ids: np.ndarray | None = None,
                   top_k: int = TOP_K, greedy_tokens: int = GREEDY_TOKENS) -> dict[str, np.ndarray]:
    """PyTorch's view of the sequences (an encoder-decoder's: of the sources ``ids`` with their ``decoder_ids``), each
    run alone, kept small whatever the vocabulary: the ``top_k`` next tokens of every position (``top_ids`` int32, the
    positions of all sequences one after another) with their log-probabilities (``top_logprobs`` float32, best first)
    and their :func:`spread` (``spread`` float32), and the greedy tokens after each sequence (``greedy`` int32)."""
    tops, logprobs, spreads, greedy = [], [], [], []
    for logits, tokens in _runs_alone(model, ids, decoder_ids, greedy_tokens):
        scores = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
        top = np.argsort(-scores, axis=-1, kind="stable")[:, :top_k]
        tops.append(top)
        logprobs.append(np.take_along_axis(scores, top, axis=-1))
        spreads.append(spread(scores, top))
        greedy.append(tokens)
    return {"top_ids": np.concatenate(tops).astype(np.int32),
            "top_logprobs": np.concatenate(logprobs).astype(np.float32),
            "spread": np.concatenate(spreads).astype(np.float32),
            "greedy": np.stack(greedy).astype(np.int32)}


def artifact_view(model: LanguageModel | Seq2SeqModel, ids: np.ndarray, want: Mapping[str, np.ndarray], *,
                  decoder_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The artifact's view of the sequences against the reference's ``want``, :data:`BATCH` a call, left-padded (an
    encoder-decoder's sources with their ``decoder_ids``: each pair alone): its log-probabilities of the reference's
    top tokens (``at_top``, float64), its own top-1 at every position (``top1``) and its greedy tokens
    (``greedy``). Positions that do not match the reference's in number give ``at_top`` of width 0, which
    :func:`sequence_measures` reports."""
    tokens = want["greedy"].shape[1]
    runs = (_runs_batched(model, ids, tokens) if isinstance(model, LanguageModel)
            else _runs_alone(model, ids, decoder_ids, tokens))
    top_ids = want["top_ids"].astype(np.int64)
    at_top, top1, greedy = [], [], []
    start = 0
    for logits, continuation in runs:
        scores = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
        chosen = top_ids[start:start + len(scores)]
        start += len(scores)
        if len(chosen) != len(scores):
            break
        at_top.append(np.take_along_axis(scores, chosen, axis=-1))
        top1.append(scores.argmax(-1))
        greedy.append(continuation)
    if start != len(top_ids):
        return {"at_top": np.zeros((start, 0)), "top1": np.zeros(0, np.int64), "greedy": want["greedy"][:0]}
    return {"at_top": np.concatenate(at_top), "top1": np.concatenate(top1), "greedy": np.stack(greedy)}


def _runs_alone(model: LanguageModel | Seq2SeqModel, ids: np.ndarray, decoder_ids: np.ndarray | None,
                tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each sequence (or source with its decoder ids) run alone: its logits ``(length, vocab)`` and ``tokens``
    greedy tokens."""
    if isinstance(model, Seq2SeqModel):
        assert decoder_ids is not None  # an encoder-decoder's evaluation always has them
        for source, decoder in zip(sequence_rows(ids), sequence_rows(decoder_ids)):
            yield model.logits(source[None], decoder[None]), model.greedy(source[None], tokens)
        return
    for row in sequence_rows(ids):
        alone, mask = row[None], np.ones((1, len(row)), dtype=np.int64)
        yield model.logits(alone, mask)[0], model.greedy(alone, mask, tokens)[0]


def _runs_batched(model: LanguageModel, ids: np.ndarray, tokens: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sequences :data:`BATCH` a call, left-padded: each one's logits at its own tokens and its ``tokens`` greedy
    tokens."""
    rows = sequence_rows(ids)
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        padded, mask = left_padded(batch)
        logits, greedy = model.logits(padded, mask), model.greedy(padded, mask, tokens)
        for index, row in enumerate(batch):
            yield logits[index, -len(row):], greedy[index]


def spread(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The variance of the log-probabilities ``scores`` ``(positions, vocab)`` under themselves, over the top tokens
    ``top`` ``(positions, k)`` and the rest of the vocabulary as one outcome (whose log-probability is the rest's
    mean): what :func:`truncated_kl` of a temperature ``T`` is ``(T - 1)**2 / 2`` times, to second order."""
    p = np.exp(scores)
    mean = (p * scores).sum(-1, keepdims=True)
    in_top = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(in_top, top, True, axis=-1)
    p_rest = np.where(in_top, 0.0, p).sum(-1)
    rest_mean = np.where(in_top, 0.0, p * scores).sum(-1) / np.maximum(p_rest, 1e-300)
    return np.where(in_top, p * (scores - mean) ** 2, 0.0).sum(-1) + p_rest * (rest_mean - mean[:, 0]) ** 2


def truncated_kl(want: np.ndarray, got: np.ndarray) -> np.ndarray:
    """KL(reference || artifact) per position over the reference's top tokens and the rest of the vocabulary as
    one outcome, from both log-probabilities of those tokens ``(positions, k)``."""
    p, q = np.exp(want.astype(np.float64)), np.exp(got.astype(np.float64))
    p_rest = np.clip(1 - p.sum(-1), 0, 1)
    q_rest = np.clip(1 - q.sum(-1), 1e-30, 1)
    rest = np.where(p_rest > 0, p_rest * (np.log(np.maximum(p_rest, 1e-30)) - np.log(q_rest)), 0.0)
    return (p * (want - got)).sum(-1) + rest


def sequence_measures(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], lengths: np.ndarray,
                      criteria: Criteria) -> tuple[dict[str, float], list[str]]:
    """The measures of the artifact's view ``got`` against the reference's ``want`` over sequences of
    ``lengths``, and the criteria they miss (as lines)."""
    if got["at_top"].shape != want["top_logprobs"].shape or got["greedy"].shape != want["greedy"].shape \
            or not np.isfinite(got["at_top"]).all():
        return {}, [f"next-token scores of shape {list(got['at_top'].shape)} (finite: "
                    f"{bool(np.isfinite(got['at_top']).all())}) cannot be compared with the reference's "
                    f"{list(want['top_logprobs'].shape)}"]
    changed = got["top1"] != want["top_ids"][:, 0]
    kl = truncated_kl(want["top_logprobs"], got["at_top"])
    same = got["greedy"] == want["greedy"]
    tokens = same.shape[1]
    first = np.where(same.all(1), tokens, np.argmin(same, axis=1))
    measures = {"agreement": float(1 - changed.mean()),
                "relative_kl": float(kl.sum() / want["spread"].astype(np.float64).sum()),
                "greedy_agreement": float(same.all(1).mean()), "first_divergence": float(first.mean())}
    misses = []
    if measures["agreement"] < criteria.min_agreement:
        misses.append(f"top-1 agreement {measures['agreement']:.3f} ({int(changed.sum())} of {changed.size} next "
                      f"tokens changed) < {criteria.min_agreement:g}")
    if criteria.max_relative_kl is not None and measures["relative_kl"] > criteria.max_relative_kl:
        sequence, token = _locate(int(kl.argmax()), lengths)
        misses.append(f"next-token KL(reference || artifact) {measures['relative_kl']:.3g} of the reference's "
                      f"log-probability spread (a temperature T gives (T - 1)^2 / 2; the largest KL after token "
                      f"{token} of sequence {sequence}) > {criteria.max_relative_kl:g}")
    if criteria.min_greedy_agreement is not None and measures["greedy_agreement"] < criteria.min_greedy_agreement:
        misses.append(f"greedy agreement {measures['greedy_agreement']:.3f} ({int((~same.all(1)).sum())} of "
                      f"{len(same)} continuations of {tokens} tokens changed, first at token "
                      f"{int(first.min())}) < {criteria.min_greedy_agreement:g}")
    return measures, misses


def _locate(position: int, lengths: np.ndarray) -> tuple[int, int]:
    """(sequence, token) of a position counted over all sequences one after another."""
    ends = np.cumsum(lengths)
    sequence = int(np.searchsorted(ends, position, side="right"))
    return sequence, position - int(ends[sequence] - lengths[sequence])
