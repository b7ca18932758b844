"""Token choice of text generation in numpy: transformers' logits processors and beam search.

:mod:`edgeexport.generator` runs the model; this module decides, from each step's logits, which
tokens come next, the way transformers' ``generate()`` does: :class:`LogitsRules` holds the
processors of ``transformers/generation/logits_process.py`` that generation configs use
(``RepetitionPenaltyLogitsProcessor``, ``NoRepeatNGramLogitsProcessor``,
``MinLengthLogitsProcessor``/``MinNewTokensLengthLogitsProcessor``, ``ForcedBOSTokenLogitsProcessor``,
``ForcedEOSTokenLogitsProcessor``), applied in transformers' order; :class:`BeamSearch` is
``GenerationMixin._beam_search`` of ``transformers/generation/utils.py`` with its helpers
(top-k continuations, running and finished beams, the length penalty, ``early_stopping``
True/False/"never"). Both are hand-written because transformers' implementations need torch,
which a device does not have. Scores stay float32 and transformers' -1e9 masks are added in its
order, so the same logits give the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# transformers' "very large negative" beam score: excludes a candidate without making it -inf.
EXCLUDED = np.float32(-1.0e9)
_KEPT = np.float32(0.0)


@dataclass(frozen=True)
class LogitsRules:
    """transformers' logits processors of one ``generate()`` call, applied in its order.

    Attributes:
        repetition_penalty: 1.0 = none.
        no_repeat_ngram_size: 0 = none.
        min_length: Sequence length (start tokens included) below which EOS is banned.
        max_length: Sequence length at which generation ends (``forced_eos`` comes one before).
        eos: EOS token ids.
        forced_bos: Forced as the token after a one-token sequence, or None.
        forced_eos: Forced as the last token, or None.
        ignored_prefix: Per row, how many leading positions the repetition penalty skips (a
            decoder-only prompt's left padding), or None.
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_length: int = 0
    max_length: int = 0
    eos: tuple[int, ...] = ()
    forced_bos: int | None = None
    forced_eos: int | None = None
    ignored_prefix: np.ndarray | None = None

    def __call__(self, sequences: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Scores ``(rows, vocab)`` for the token after ``sequences`` ``(rows, length)``; a new array
        where a rule applies, ``scores`` itself where none does."""
        length = sequences.shape[1]
        if self.repetition_penalty != 1.0:
            scores = penalize_repetitions(sequences, scores, self.repetition_penalty, self.ignored_prefix)
        if self.no_repeat_ngram_size:
            scores = ban_repeated_ngrams(sequences, scores, self.no_repeat_ngram_size)
        if self.eos and length < self.min_length:
            scores = scores.copy()
            scores[:, list(self.eos)] = -np.inf
        if self.forced_bos is not None and length == 1:
            scores = _forced(scores, self.forced_bos)
        if self.forced_eos is not None and length == self.max_length - 1:
            scores = _forced(scores, self.forced_eos)
        return scores


def penalize_repetitions(sequences: np.ndarray, scores: np.ndarray, penalty: float,
                         ignored_prefix: np.ndarray | None = None) -> np.ndarray:
    """transformers' ``RepetitionPenaltyLogitsProcessor``: the score of every token in a row's
    sequence is divided by ``penalty`` when positive, multiplied when negative."""
    vocab = scores.shape[-1]
    ids = np.minimum(sequences, vocab)  # ids past the scores' vocab go to a spare column, as there
    if ignored_prefix is not None:
        ids = np.where(np.arange(ids.shape[1]) < ignored_prefix[:, None], vocab, ids)
    seen = np.zeros((len(scores), vocab + 1), dtype=bool)
    np.put_along_axis(seen, ids, True, axis=1)
    penalized = np.where(scores < 0, scores * penalty, scores / penalty)
    return np.where(seen[:, :vocab], penalized, scores)


def ban_repeated_ngrams(sequences: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """transformers' ``NoRepeatNGramLogitsProcessor``: a token that would complete an n-gram already
    in the row's sequence gets -inf."""
    length = sequences.shape[1]
    if length < size:
        return scores
    vocab = scores.shape[-1]
    windows = sliding_window_view(sequences, size, axis=1)  # (rows, length - size + 1, size)
    prefix = sequences[:, length + 1 - size:]
    matches = (windows[..., :-1] == prefix[:, None, :]).all(axis=-1)
    banned = np.zeros((len(scores), vocab + 1), dtype=bool)
    np.put_along_axis(banned, np.where(matches, np.minimum(windows[..., -1], vocab), vocab), True, axis=1)
    return np.where(banned[:, :vocab], -np.inf, scores)


def _forced(scores: np.ndarray, token: int) -> np.ndarray:
    forced = np.full_like(scores, -np.inf)
    forced[:, token] = 0
    return forced


class BeamSearch:
    """transformers' vectorized beam search (``GenerationMixin._beam_search``), one step per call.

    Each batch item keeps ``num_beams`` running beams and the ``num_beams`` best finished ones. A
    step scores every (beam, token) continuation, keeps the best ``max(2, 1 + len(eos)) * num_beams``,
    continues the best that did not end, and files those that ended (EOS or ``max_length``) among
    the finished by score / length ** ``length_penalty``.

    Args:
        prompt: ``(batch, start)`` token ids every beam starts from (the prompt, or the decoder-start token).
        num_beams: Beams per batch item.
        max_length: Sequence length (``start`` included) at which every beam ends.
        eos: EOS token ids.
        fill: Token after a finished sequence's end.
        length_penalty: Exponent of the length that divides a finished beam's score.
        early_stopping: True, False or ``"never"`` (see :class:`edgeexport.generation_spec.GenerationConfig`).
    """

    def __init__(self, prompt: np.ndarray, *, num_beams: int, max_length: int, eos: tuple[int, ...], fill: int,
                 length_penalty: float, early_stopping: bool | str) -> None:
        batch, self.start = prompt.shape
        self.num_beams, self.max_length, self.eos = num_beams, max_length, np.array(eos, dtype=np.int64)
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.candidates = max(2, 1 + len(eos)) * num_beams
        self.length = self.start
        self.running = np.full((batch, num_beams, max_length), fill, dtype=np.int64)
        self.running[:, :, :self.start] = prompt[:, None, :]
        # Only the first beam's continuations count at the first step: the beams start identical.
        self.running_scores = np.zeros((batch, num_beams), dtype=np.float32)
        self.running_scores[:, 1:] = EXCLUDED
        self.finished = self.running.copy()
        self.finished_scores = np.full((batch, num_beams), EXCLUDED, dtype=np.float32)
        self.finished_lengths = np.zeros((batch, num_beams), dtype=np.int64)  # new tokens of each finished beam
        self.is_finished = np.zeros((batch, num_beams), dtype=bool)
        self.improvable = np.ones((batch, 1), dtype=bool)
        self.done = False

    @property
    def sequences(self) -> np.ndarray:
        """``(batch * num_beams, length)``: the running beams' tokens so far."""
        return self.running[:, :, :self.length].reshape(-1, self.length)

    @property
    def tokens(self) -> np.ndarray:
        """``(batch * num_beams,)``: each running beam's newest token, the next model input."""
        return self.running[:, :, self.length - 1].reshape(-1)

    def step(self, log_probs: np.ndarray) -> np.ndarray:
        """Advance by one token given the running beams' processed log-probabilities
        ``(batch * num_beams, vocab)``; return, for each running beam, the row it continues
        (the KV-cache rows to carry into the next step)."""
        batch, beams = self.running_scores.shape
        vocab = log_probs.shape[-1]
        scores = (log_probs.reshape(batch, beams, vocab) + self.running_scores[:, :, None]).reshape(batch, -1)
        top_scores, top = _top_k(scores, self.candidates)
        source, tokens = top // vocab, top % vocab
        sequences = _gather(self.running, source)
        sequences[:, :, self.length] = tokens
        ends = np.isin(tokens, self.eos) | (self.length + 1 >= self.max_length)
        # The best continuations that did not end run on.
        continuing = top_scores + np.where(ends, EXCLUDED, _KEPT)
        best = _top_k(continuing, beams)[1]
        self.running, self.running_scores = _gather(sequences, best), _gather(continuing, best)
        rows = _gather(source, best) + np.arange(batch)[:, None] * beams
        self._file_finished(sequences, top_scores, ends)
        self.length += 1
        self._update_improvable()
        self.done = not (self.improvable.any() and not (self.is_finished.all() and self.early_stopping is True)
                         and not ends.all())
        return rows.reshape(-1)

    def best(self) -> np.ndarray:
        """``(batch, new_tokens)``: each batch item's best finished beam after the start tokens, filled
        past its end up to the longest."""
        return self.finished[:, 0, self.start:self.start + int(self.finished_lengths[:, 0].max())]

    def _file_finished(self, sequences: np.ndarray, top_scores: np.ndarray, ends: np.ndarray) -> None:
        """transformers' ``_update_finished_beams``: the candidates among the best ``num_beams`` that
        ended compete with the finished beams by length-penalized score."""
        beams = self.num_beams
        ended = ends & (np.arange(self.candidates) < beams)
        scores = top_scores / ((self.length + 1 - self.start) ** self.length_penalty)
        full = self.is_finished.all(axis=-1, keepdims=True) & (self.early_stopping is True)
        scores = scores + np.where(full, EXCLUDED, _KEPT)
        scores = scores + np.where(~self.improvable, EXCLUDED, _KEPT)
        scores = scores + np.where(~ended, EXCLUDED, _KEPT)
        merged_scores = np.concatenate([self.finished_scores, scores], axis=1)
        best = _top_k(merged_scores, beams)[1]
        self.finished = _gather(np.concatenate([self.finished, sequences], axis=1), best)
        self.finished_scores = _gather(merged_scores, best)
        lengths = np.full(ends.shape, self.length + 1 - self.start, dtype=np.int64)
        self.finished_lengths = _gather(np.concatenate([self.finished_lengths, lengths], axis=1), best)
        self.is_finished = _gather(np.concatenate([self.is_finished, ended], axis=1), best)

    def _update_improvable(self) -> None:
        """transformers' ``_check_early_stop_heuristic``: can the best running beam still beat the
        worst finished one?"""
        if self.early_stopping == "never" and self.length_penalty > 0:
            length = self.max_length - self.start
        else:
            length = self.length - self.start
        best_running = self.running_scores[:, :1] / (length ** self.length_penalty)
        worst_finished = np.where(self.is_finished, self.finished_scores.min(axis=1, keepdims=True), EXCLUDED)
        self.improvable &= (best_running > worst_finished).any(axis=-1, keepdims=True)


def _top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest values of each row, largest first (ties: lower index first), and their indices."""
    if k < values.shape[-1]:
        picked = np.argpartition(-values, k - 1, axis=-1)[:, :k]
    else:
        picked = np.broadcast_to(np.arange(values.shape[-1]), values.shape)
    picked_values = np.take_along_axis(values, picked, axis=-1)
    order = np.lexsort((picked, -picked_values), axis=-1)
    indices = np.take_along_axis(picked, order, axis=-1)
    return np.take_along_axis(values, indices, axis=-1), indices


def _gather(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``values[b, indices[b, j], ...]``: beams (axis 1) picked per batch item, as transformers' ``_gather_beams``."""
    return np.take_along_axis(values, indices.reshape(indices.shape + (1,) * (values.ndim - 2)), axis=1)
