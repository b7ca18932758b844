"""Text generation over the runners of a generation artifact: pure numpy, any backend.

:class:`Generator` drives a ``causal-lm-with-past`` artifact (one decoder) or a
``seq2seq-lm-with-past`` bundle (the encoder once per prompt, then the decoder per token)
through :meth:`Runner.step`, following the cache convention of :mod:`edgeexport.generation_spec`.
It decodes greedily, samples (temperature, top-k, top-p, a seeded numpy ``Generator``) or runs
beam search (``num_beams``, ``length_penalty``, ``early_stopping``), applies repetition
penalties, no-repeat n-grams, minimum lengths and forced BOS/EOS (:mod:`edgeexport.decoding`),
stops at the most new tokens or when every row has produced EOS (finished rows then get the pad
token), and takes batches with left padding and an attention mask. Every setting defaults to
the artifact's recorded generation config (:class:`~edgeexport.generation_spec.GenerationConfig`).

Greedy decoding and beam search reproduce transformers' ``generate()`` token for token;
sampling applies the same processors and temperature, top-k and top-p filters but draws with
numpy, so a seed gives the same tokens here on every backend, not the same tokens as torch.
Beam sampling (``do_sample`` with ``num_beams`` > 1) is refused.

On onnxruntime the cache of greedy decoding and sampling stays in ``OrtValue`` buffers between
steps (IO binding). Beam search asks for numpy caches instead and reorders their rows with
``numpy.take`` each step (an ``OrtValue`` has no row gather; copying it out costs the same). A
backend that does not override :meth:`Runner.step` goes through its checked ``runner(inputs)``
call. Nothing here imports torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special

from edgeexport.bundle import component_folders
from edgeexport.decoding import BeamSearch, LogitsRules
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.generation_spec import GenerationConfig, GenerationSpec, empty_past_shape
from edgeexport.processing import load_tokenizer, position_ids
from edgeexport.runner import Runner, load

Streamer = Callable[[np.ndarray], None]


@dataclass
class Step:
    """One generated position: a token per row, its raw logits and the seconds since generation began."""

    tokens: np.ndarray
    logits: np.ndarray
    elapsed_s: float


@dataclass
class GenerationOutput:
    """Generated tokens ``(batch, new_tokens)`` (pad after a row's EOS) and timings.

    ``logits`` holds the raw next-token logits of every step: ``(batch, vocab)``, or
    ``(batch * num_beams, vocab)`` for the running beams of beam search; ``first_token_s``
    (the first step) includes the encoder and the prompt's forward pass; ``eos`` the ids that
    ended rows.
    """

    tokens: np.ndarray
    logits: list[np.ndarray]
    first_token_s: float
    total_s: float
    eos: tuple[int, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens of all rows per second, prompt processing included."""
        return self.tokens.size / self.total_s if self.total_s else float("inf")

    @property
    def ended_at_once(self) -> bool:
        """Every row's first new token is EOS: the model ended the sequences at once (``min_new_tokens``
        bans EOS for a number of tokens)."""
        return bool(self.eos) and bool(np.isin(self.tokens[:, 0], self.eos).all())

    def to_dict(self) -> dict[str, Any]:
        """Token ids by row, their count, the timings and whether the model ended the sequences at once."""
        return {"token_ids": self.tokens.tolist(), "tokens": int(self.tokens.size), "seconds": round(self.total_s, 4),
                "first_token_ms": round(self.first_token_s * 1e3, 2), "tokens_per_s": round(self.tokens_per_s, 2),
                "ended_at_once": self.ended_at_once}


@dataclass
class _Call:
    """What one generate call settled: the checked prompt, the sequences new tokens follow, the
    EOS and pad ids, the most new tokens and the logits rules."""

    ids: np.ndarray
    mask: np.ndarray
    start: np.ndarray
    eos: tuple[int, ...]
    pad: int
    max_new_tokens: int
    rules: LogitsRules


class Generator:
    """Generates tokens with the runners of a generation artifact; a context manager frees their sessions.

    Args:
        decoder: Runner of the decoder artifact (``generation.role`` = ``decoder``).
        encoder: Runner of the encoder, for encoder-decoder models.

    Raises:
        ArtifactError: the artifact has no generation block, or an encoder-decoder lacks its encoder.
    """

    def __init__(self, decoder: Runner, encoder: Runner | None = None) -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.spec = GenerationSpec.of(decoder.artifact.manifest)
        if self.spec.role != "decoder":
            raise ArtifactError("this artifact is the encoder of a bundle; pass the bundle folder to generate")
        if self.spec.encoder_decoder and encoder is None:
            raise ArtifactError("this decoder needs its encoder; pass the bundle folder that holds both")
        self._tokenizer: Any = None

    @classmethod
    def load(cls, path: str | Path, **runner_options: Any) -> Generator:
        """A generator for a decoder artifact or an encoder-decoder bundle folder (see
        :func:`edgeexport.runner.load`)."""
        folders = component_folders(path)
        if "" in folders:
            return cls(load(path, **runner_options))
        if set(folders) != {"encoder", "decoder"}:
            raise ArtifactError(f"the bundle holds {', '.join(folders)}; generation needs an encoder and a decoder")
        return cls(load(folders["decoder"], **runner_options), load(folders["encoder"], **runner_options))

    def __enter__(self) -> Generator:
        for runner in self._runners():
            runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        for runner in self._runners():
            runner.deactivate()

    def _runners(self) -> list[Runner]:
        return [r for r in (self.encoder, self.decoder) if r is not None]

    # ----------------------------------------------------------------------- text

    @property
    def tokenizer(self) -> Any:
        """The artifact's ``tokenizers.Tokenizer``, or None when it was converted without one."""
        if self._tokenizer is None and self.spec.tokenizer is not None:
            self._tokenizer = load_tokenizer(self.decoder.artifact, self.spec.tokenizer)
        return self._tokenizer

    def prompt(self, prompt: str | None = None, prompt_ids: str | Sequence[int] | None = None) -> np.ndarray:
        """Token ids ``(1, n)`` of a text prompt (needs the tokenizer) or of ids such as ``"1,2,3"``.

        Raises:
            UsageError: neither or both given, a text prompt without a tokenizer, or bad ids.
        """
        if (prompt is None) == (prompt_ids is None):
            raise UsageError("pass a prompt: text with --prompt, or token ids with --prompt-ids 1,2,3 (one of them)")
        if prompt is not None:
            if self.tokenizer is None:
                raise UsageError("the artifact has no tokenizer (it was not converted from a save_pretrained folder "
                                 "holding tokenizer.json); pass token ids with --prompt-ids 1,2,3")
            ids = self.tokenizer.encode(prompt).ids
        else:
            ids = parse_token_ids(prompt_ids) if isinstance(prompt_ids, str) else list(prompt_ids or [])
        if not ids:
            raise UsageError("the prompt is empty; pass at least one token")
        return np.array([ids], dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids (special tokens skipped), or the ids themselves without a tokenizer."""
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    # ----------------------------------------------------------------------- generation

    @property
    def config(self) -> GenerationConfig:
        """The artifact's generation config: what every option defaults to."""
        return self.spec.config

    def generate(self, input_ids: np.ndarray | Sequence[Sequence[int]], attention_mask: np.ndarray | None = None, *,
                 eos_token_id: int | Sequence[int] | None = None, seed: int | None = None,
                 streamer: Streamer | None = None, **options: Any) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` tokens per row, greedily, by sampling or by beam search.

        Args:
            input_ids: Prompt token ids ``(batch, n)``; rows of different lengths are left-padded.
            attention_mask: ``(batch, n)``, 0 on the left padding. Defaults to all ones.
            eos_token_id: Token id(s) that end a row. Defaults to the artifact's EOS.
            seed: Seed of the numpy random generator used for sampling. Defaults to None (fresh entropy).
            streamer: Called with each step's tokens ``(batch,)`` as soon as they are chosen; with beam
                search, which settles the tokens only at its end, with each position then.
            **options: Fields of :class:`~edgeexport.generation_spec.GenerationConfig`: ``max_new_tokens``,
                ``min_new_tokens``, ``num_beams``, ``length_penalty``, ``early_stopping``,
                ``repetition_penalty``, ``no_repeat_ngram_size``, ``do_sample``, ``temperature``,
                ``top_k``, ``top_p``, ``max_length``, ``min_length``. One left out (or None) is the
                artifact's (:attr:`config`).

        Raises:
            UsageError: bad options.
            InputSpecError: ids or mask of the wrong shape or out of the vocabulary.
        """
        config = self.config.updated(**options)
        if config.num_beams > 1:
            output = self._beam_search(input_ids, attention_mask, config, eos_token_id)
            for tokens in output.tokens.T if streamer is not None else ():
                streamer(tokens)
            return output
        steps = []
        for step in self._decode(input_ids, attention_mask, config, eos_token_id, seed):
            steps.append(step)
            if streamer is not None:
                streamer(step.tokens)
        return GenerationOutput(tokens=np.stack([s.tokens for s in steps], axis=1), logits=[s.logits for s in steps],
                                first_token_s=steps[0].elapsed_s, total_s=steps[-1].elapsed_s,
                                eos=self._eos(eos_token_id))

    def stream(self, input_ids: np.ndarray | Sequence[Sequence[int]], attention_mask: np.ndarray | None = None, *,
               eos_token_id: int | Sequence[int] | None = None, seed: int | None = None,
               **options: Any) -> Iterator[Step]:
        """Yield each generated position as it is chosen; the arguments are :meth:`generate`'s.

        Raises:
            UsageError: bad options, or beam search (it settles the tokens only at its end).
        """
        config = self.config.updated(**options)
        if config.num_beams > 1:
            raise UsageError(f"beam search (num_beams={config.num_beams}) settles the tokens only at its end, so it "
                             "cannot stream; call generate(), or pass num_beams=1")
        return self._decode(input_ids, attention_mask, config, eos_token_id, seed)

    def _decode(self, input_ids: Any, attention_mask: Any, config: GenerationConfig, eos_token_id: Any,
                seed: int | None) -> Iterator[Step]:
        """Greedy decoding or sampling: one token per row and step, the cache kept where the runner puts it."""
        call = self._prepare(input_ids, attention_mask, config, eos_token_id)
        rng = np.random.default_rng(seed)
        sequences = call.start
        start = time.perf_counter()
        feed = self.first_feed(call.ids, call.mask, native_cache=True)
        unfinished = np.ones(len(call.ids), dtype=bool)
        for _ in range(call.max_new_tokens):
            outputs = self.decoder.step(feed, keep=self.spec.present)
            logits = np.asarray(outputs["logits"][:, -1, :], dtype=np.float32)
            scores = call.rules(sequences, logits)
            chosen = sample(scores, rng, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p) \
                if config.do_sample else scores.argmax(axis=-1)
            chosen = np.where(unfinished, chosen, call.pad).astype(np.int64)
            unfinished &= ~np.isin(chosen, call.eos)
            yield Step(chosen, logits, time.perf_counter() - start)
            if not unfinished.any():
                return
            sequences = np.concatenate([sequences, chosen[:, None]], axis=1)
            feed = self._next_feed(feed, outputs, chosen)

    def _beam_search(self, input_ids: Any, attention_mask: Any, config: GenerationConfig,
                     eos_token_id: Any) -> GenerationOutput:
        """Beam search: the prompt runs once per row, then every beam is a row of the decoder's batch."""
        beams = config.num_beams
        call = self._prepare(input_ids, attention_mask, config, eos_token_id, rows_per_prompt=beams)
        # transformers fills with ``pad_token_id or eos_token_id[0]``: a pad id of 0 falls back to EOS.
        search = BeamSearch(call.start, num_beams=beams, max_length=call.start.shape[1] + call.max_new_tokens,
                            eos=call.eos, fill=call.pad or (call.eos[0] if call.eos else 0),
                            length_penalty=config.length_penalty, early_stopping=config.early_stopping)
        start = time.perf_counter()
        feed = self.first_feed(call.ids, call.mask, native_cache=False)
        outputs = self.decoder.step(feed)
        feed = {name: np.repeat(value, beams, axis=0) for name, value in feed.items()}
        outputs = {"logits": outputs["logits"][:, -1:], **{name: outputs[name] for name in self.spec.present}}
        outputs = {name: np.repeat(value, beams, axis=0) for name, value in outputs.items()}
        logits_per_step, first_token_s = [], 0.0
        while True:
            logits = np.asarray(outputs["logits"][:, -1, :], dtype=np.float32)
            logits_per_step.append(logits)
            rows = search.step(call.rules(search.sequences, scipy.special.log_softmax(logits, axis=-1)))
            first_token_s = first_token_s or time.perf_counter() - start
            if search.done:
                break
            kept = {name: np.take(outputs[name], rows, axis=0) for name in self.spec.present}
            feed = self._next_feed(feed, kept, search.tokens)
            outputs = self.decoder.step(feed)
        return GenerationOutput(tokens=search.best(), logits=logits_per_step, first_token_s=first_token_s,
                                total_s=time.perf_counter() - start, eos=call.eos)

    def _prepare(self, input_ids: Any, attention_mask: Any, config: GenerationConfig, eos_token_id: Any, *,
                 rows_per_prompt: int = 1) -> _Call:
        """Check the prompt and settle what one call needs; ``rows_per_prompt`` beams run per prompt row."""
        ids, mask = self._prompt_arrays(input_ids, attention_mask)
        eos = self._eos(eos_token_id)
        start = self._start_sequences(ids)
        max_new_tokens = config.new_tokens(start.shape[1])
        tokens = self.spec.tokens
        # Left padding escapes the repetition penalty of a decoder-only prompt, as in transformers.
        padding = None if self.spec.encoder_decoder else np.repeat(np.argmax(mask != 0, axis=1), rows_per_prompt)
        rules = LogitsRules(repetition_penalty=config.repetition_penalty,
                            no_repeat_ngram_size=config.no_repeat_ngram_size,
                            min_length=config.min_total_length(start.shape[1]),
                            max_length=start.shape[1] + max_new_tokens, eos=eos, forced_bos=tokens.forced_bos,
                            forced_eos=tokens.forced_eos, ignored_prefix=padding)
        pad = tokens.pad if tokens.pad is not None else (eos[0] if eos else 0)
        return _Call(ids=ids, mask=mask, start=start, eos=eos, pad=pad, max_new_tokens=max_new_tokens, rules=rules)

    def _prompt_arrays(self, input_ids: Any, attention_mask: Any) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or 0 in ids.shape:
            raise InputSpecError(f"input_ids must be (batch, length) with at least one token, got shape {list(ids.shape)}")
        vocab = next(spec for spec in self.decoder.outputs if spec.name == "logits").shape[-1]
        if ids.min() < 0 or (isinstance(vocab, int) and ids.max() >= vocab):
            raise InputSpecError(f"token ids must be in [0, {vocab}), got {int(ids.min())}..{int(ids.max())}")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape:
            raise InputSpecError(f"attention_mask has shape {list(mask.shape)}, input_ids {list(ids.shape)}; they must match")
        return ids, mask

    def _eos(self, eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
        if eos_token_id is None:
            return self.spec.tokens.eos
        eos = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)
        if not all(isinstance(t, (int, np.integer)) and t >= 0 for t in eos):
            raise UsageError(f"eos_token_id must be a token id or a list of them, got {eos_token_id!r}")
        return tuple(int(t) for t in eos)

    def _start_sequences(self, ids: np.ndarray) -> np.ndarray:
        """What the first new token follows: the prompt, or the decoder-start token of an encoder-decoder."""
        if not self.spec.encoder_decoder:
            return ids
        start = self.spec.tokens.first_decoder_token
        if start is None:
            raise ArtifactError("the manifest names no decoder_start (or bos) token id; re-export the model with one set")
        return np.full((len(ids), 1), start, dtype=np.int64)

    def first_feed(self, ids: np.ndarray, mask: np.ndarray, *, native_cache: bool) -> dict[str, Any]:
        """The first decoder step's inputs for the prompts ``ids`` with their ``mask``, over an empty cache (running
        the encoder); ``native_cache`` lets the encoder's cross key/values stay backend handles, otherwise they are
        numpy arrays. The task agreement teacher-forces a decoder by replacing its ``input_ids``."""
        batch = len(ids)
        specs = {spec.name: spec for spec in self.decoder.inputs}
        past = {name: np.zeros(empty_past_shape(specs[name].shape, batch), dtype=specs[name].dtype)
                for name in self.spec.past}
        if not self.spec.encoder_decoder:
            feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)[:, -ids.shape[1]:]}
            return {**_accepted(self.decoder, feed), **past}
        assert self.encoder is not None  # checked in __init__
        encoded = self.encoder.step(_accepted(self.encoder, {"input_ids": ids, "attention_mask": mask}),
                                    keep=self.spec.cross if native_cache else ())
        feed = {"input_ids": self._start_sequences(ids), "encoder_attention_mask": mask}
        return {**_accepted(self.decoder, feed), **past, **{name: encoded[name] for name in self.spec.cross}}

    def _next_feed(self, feed: Mapping[str, Any], outputs: Mapping[str, Any], chosen: np.ndarray) -> dict[str, Any]:
        following = dict(feed)
        following["input_ids"] = chosen[:, None]
        if "attention_mask" in feed:
            mask = np.concatenate([feed["attention_mask"], np.ones((len(chosen), 1), dtype=np.int64)], axis=1)
            following["attention_mask"] = mask
            if "position_ids" in feed:
                following["position_ids"] = position_ids(mask)[:, -1:]
        following.update({past: outputs[present] for past, present in zip(self.spec.past, self.spec.present)})
        return following


class TextStreamer:
    """A ``streamer`` that writes row 0's new text as tokens arrive (token ids without a tokenizer).

    It decodes all tokens so far and writes what was added, holding back while the text ends
    in an incomplete character.
    """

    def __init__(self, generator: Generator, write: Callable[[str], None]) -> None:
        self.generator = generator
        self.write = write
        self.ids: list[int] = []
        self.text = ""

    def __call__(self, tokens: np.ndarray) -> None:
        self.ids.append(int(tokens[0]))
        if self.generator.tokenizer is None:
            self.write(f"{self.ids[-1]} ")
            return
        text = self.generator.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.write(text[len(self.text):])
            self.text = text


def sample(scores: np.ndarray, rng: np.random.Generator, *, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> np.ndarray:
    """One token per row drawn from ``softmax(scores / temperature)`` after top-k and top-p filtering.

    The filters match transformers' ``TopKLogitsWarper`` and ``TopPLogitsWarper`` (ties at the
    k-th score are kept; the most likely token always survives top-p).
    """
    scores = scores.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(scores, axis=-1)[:, -min(top_k, scores.shape[-1])][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    if top_p < 1.0:
        order = np.argsort(scores, axis=-1, kind="stable")
        ascending = np.take_along_axis(scores, order, axis=-1)
        remove = np.cumsum(scipy.special.softmax(ascending, axis=-1), axis=-1) <= 1 - top_p
        remove[:, -1] = False
        np.put_along_axis(scores, order, np.where(remove, -np.inf, ascending), axis=-1)
    cdf = np.cumsum(scipy.special.softmax(scores, axis=-1), axis=-1)
    draws = rng.random((len(scores), 1)) * cdf[:, -1:]
    return np.argmax(cdf >= draws, axis=-1)


def parse_token_ids(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``.

    Raises:
        UsageError: anything but comma-separated non-negative integers.
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise UsageError(f"--prompt-ids must be comma-separated token ids like 1,2,3, got {text!r}")
    return [int(part) for part in parts]


def _accepted(runner: Runner, feed: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``feed`` that the runner's model takes as inputs."""
    names = {spec.name for spec in runner.inputs}
    return {name: value for name, value in feed.items() if name in names}
