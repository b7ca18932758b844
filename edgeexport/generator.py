"""Text generation over the runners of a generation artifact: pure numpy, any backend.

:class:`Generator` drives a ``causal-lm-with-past`` artifact (one decoder) or a
``seq2seq-lm-with-past`` bundle (the encoder once per prompt, then the decoder per token)
through :meth:`Runner.step`, following the cache convention of :mod:`edgeexport.generation_spec`.
It decodes greedily or samples (temperature, top-k, top-p, a seeded numpy ``Generator``),
stops at ``max_new_tokens`` or when every row has produced EOS (finished rows then get the
pad token), forces BOS/EOS where the model asks for it, and takes batches with left padding
and an attention mask. Greedy decoding reproduces transformers' ``generate(do_sample=False)``;
sampling applies the same temperature, top-k and top-p filters but draws with numpy, so a seed
gives the same tokens here on every backend, not the same tokens as torch. Beam search and
other ``generation_config`` settings (repetition penalties, minimum lengths) are not applied.

On onnxruntime the cache stays in ``OrtValue`` buffers between steps (IO binding); a backend
that does not override :meth:`Runner.step` goes through its checked ``runner(inputs)`` call.
Nothing here imports torch.
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
from edgeexport.errors import ArtifactError, InputSpecError, UsageError
from edgeexport.generation_spec import GenerationSpec
from edgeexport.processing import load_tokenizer
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

    ``logits`` holds the raw next-token logits ``(batch, vocab)`` of every step;
    ``first_token_s`` includes the encoder and the prompt's forward pass.
    """

    tokens: np.ndarray
    logits: list[np.ndarray]
    first_token_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens of all rows per second, prompt processing included."""
        return self.tokens.size / self.total_s if self.total_s else float("inf")


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

    def generate(self, input_ids: np.ndarray | Sequence[Sequence[int]], attention_mask: np.ndarray | None = None, *,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, streamer: Streamer | None = None) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` tokens per row; see :meth:`stream` for the arguments.

        Args:
            streamer: Called with each step's tokens ``(batch,)`` as soon as they are chosen.
        """
        steps = []
        for step in self.stream(input_ids, attention_mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
            steps.append(step)
            if streamer is not None:
                streamer(step.tokens)
        return GenerationOutput(tokens=np.stack([s.tokens for s in steps], axis=1), logits=[s.logits for s in steps],
                                first_token_s=steps[0].elapsed_s, total_s=steps[-1].elapsed_s)

    def stream(self, input_ids: np.ndarray | Sequence[Sequence[int]], attention_mask: np.ndarray | None = None, *,
               max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None) -> Iterator[Step]:
        """Yield each generated position as it is chosen.

        Args:
            input_ids: Prompt token ids ``(batch, n)``; rows of different lengths are left-padded.
            attention_mask: ``(batch, n)``, 0 on the left padding. Defaults to all ones.
            max_new_tokens: Most tokens to generate per row (at least 1). Defaults to 32.
            do_sample: Sample instead of taking the most likely token. Defaults to False.
            temperature: Divides the logits before sampling (> 0). Defaults to 1.0.
            top_k: Sample among the k most likely tokens only (0 = all). Defaults to 0.
            top_p: Sample among the most likely tokens whose probabilities sum to top_p (0 < top_p <= 1).
                Defaults to 1.0.
            seed: Seed of the numpy random generator used for sampling. Defaults to None (fresh entropy).

        Raises:
            UsageError: bad sampling options.
            InputSpecError: ids or mask of the wrong shape or out of the vocabulary.
        """
        _check_options(max_new_tokens, temperature, top_k, top_p)
        ids, mask = self._prompt_arrays(input_ids, attention_mask)
        rng = np.random.default_rng(seed)
        tokens = self.spec.tokens
        eos = np.array(tokens.eos, dtype=np.int64)
        pad = tokens.pad if tokens.pad is not None else (tokens.eos[0] if tokens.eos else 0)
        start_length = 1 if self.spec.encoder_decoder else ids.shape[1]
        start = time.perf_counter()
        feed = self._first_feed(ids, mask)
        unfinished = np.ones(len(ids), dtype=bool)
        for index in range(max_new_tokens):
            outputs = self.decoder.step(feed, keep=self.spec.present)
            logits = np.asarray(outputs["logits"][:, -1, :], dtype=np.float32)
            scores = self._forced(logits, start_length + index, start_length + max_new_tokens)
            chosen = sample(scores, rng, temperature=temperature, top_k=top_k, top_p=top_p) if do_sample \
                else scores.argmax(axis=-1)
            chosen = np.where(unfinished, chosen, pad).astype(np.int64)
            unfinished &= ~np.isin(chosen, eos)
            yield Step(chosen, logits, time.perf_counter() - start)
            if not unfinished.any():
                return
            feed = self._next_feed(feed, outputs, chosen)

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

    def _first_feed(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        batch = len(ids)
        specs = {spec.name: spec for spec in self.decoder.inputs}
        past = {name: np.zeros(_empty_past_shape(specs[name].shape, batch), dtype=specs[name].dtype)
                for name in self.spec.past}
        if not self.spec.encoder_decoder:
            feed = {"input_ids": ids, "attention_mask": mask, "position_ids": _positions(mask)[:, -ids.shape[1]:]}
            return {**_accepted(self.decoder, feed), **past}
        assert self.encoder is not None  # checked in __init__
        encoded = self.encoder.step(_accepted(self.encoder, {"input_ids": ids, "attention_mask": mask}),
                                    keep=self.spec.cross)
        start = self.spec.tokens.decoder_start if self.spec.tokens.decoder_start is not None else self.spec.tokens.bos
        if start is None:
            raise ArtifactError("the manifest names no decoder_start (or bos) token id; re-export the model with one set")
        feed = {"input_ids": np.full((batch, 1), start, dtype=np.int64), "encoder_attention_mask": mask}
        return {**_accepted(self.decoder, feed), **past, **{name: encoded[name] for name in self.spec.cross}}

    def _next_feed(self, feed: Mapping[str, Any], outputs: Mapping[str, Any], chosen: np.ndarray) -> dict[str, Any]:
        following = dict(feed)
        following["input_ids"] = chosen[:, None]
        if "attention_mask" in feed:
            mask = np.concatenate([feed["attention_mask"], np.ones((len(chosen), 1), dtype=np.int64)], axis=1)
            following["attention_mask"] = mask
            if "position_ids" in feed:
                following["position_ids"] = _positions(mask)[:, -1:]
        following.update({past: outputs[present] for past, present in zip(self.spec.past, self.spec.present)})
        return following

    def _forced(self, logits: np.ndarray, length: int, max_length: int) -> np.ndarray:
        """Force BOS as the first token and EOS as the last, as transformers' forced_bos/eos processors do."""
        tokens = self.spec.tokens
        forced = tokens.forced_bos if length == 1 else tokens.forced_eos if length == max_length - 1 else None
        if forced is None:
            return logits
        scores = np.full_like(logits, -np.inf)
        scores[:, forced] = 0
        return scores


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


def _positions(mask: np.ndarray) -> np.ndarray:
    """Position ids as transformers derives them from a (left-padded) mask: 0, 1, ... over real tokens."""
    return np.where(mask == 0, 0, np.cumsum(mask, axis=-1) - 1).astype(np.int64)


def _accepted(runner: Runner, feed: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``feed`` that the runner's model takes as inputs."""
    names = {spec.name for spec in runner.inputs}
    return {name: value for name, value in feed.items() if name in names}


def _empty_past_shape(shape: Sequence[int | str], batch: int) -> tuple[int, ...]:
    """``(batch, heads, 0, head_dim)`` from a past input's manifest shape."""
    heads, head_dim = shape[1], shape[3]
    if not (isinstance(heads, int) and isinstance(head_dim, int)):
        raise ArtifactError(f"cache inputs must have fixed heads and head_dim, the manifest says {list(shape)}")
    return batch, heads, 0, head_dim


def _check_options(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}; use greedy decoding (do_sample=False) instead")
    if top_k < 0:
        raise UsageError(f"top_k must be >= 0 (0 = no top-k filter), got {top_k}")
    if not 0 < top_p <= 1:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
