"""The KV-cache I/O convention of generation artifacts and the manifest's ``generation`` block.

The tasks ``causal-lm-with-past`` and ``seq2seq-lm-with-past`` export decoders that take and
return their attention cache as flat named tensors, one key and one value per layer ``i``::

    past_key_values.{i}.key|value     decoder input   (batch, heads, past_sequence, head_dim)
    present.{i}.key|value             decoder output  (batch, heads, past_sequence+sequence, head_dim)
    encoder_key_values.{i}.key|value  encoder output, decoder input
                                                      (batch, heads, encoder_sequence, head_dim)

Decoder-only models (``causal-lm-with-past``) are ONE graph (a merged decoder): inputs
``input_ids`` (batch, sequence), ``attention_mask`` (batch, past_sequence+sequence),
``position_ids`` (batch, sequence) when the model takes them, and the past; outputs ``logits``
(batch, sequence, vocab) and the present. The first step passes the whole prompt with an empty
past (past_sequence = 0), each later step one token and the previous step's present.

Encoder-decoder models (``seq2seq-lm-with-past``) are a bundle (:mod:`edgeexport.bundle`) of two
artifacts. The ``encoder`` takes ``input_ids`` and ``attention_mask`` (batch, encoder_sequence)
and returns the cross-attention key/value of every decoder layer, computed once per prompt. The
``decoder`` takes ``input_ids`` (decoder tokens, batch, sequence), ``encoder_attention_mask``, its
self-attention past and the encoder's cross key/values, and returns ``logits`` and the present.

Every component's manifest holds a ``generation`` block (:class:`GenerationSpec`) with its role,
these names in layer order, the special token ids and the tokenizer file if one was copied; a
decoder's block also holds its ``generation_config`` (:class:`GenerationConfig`): how the model
decodes by default (beam search, penalties, lengths, sampling), read from the model's
transformers generation config at conversion. This module imports neither torch nor a runtime.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeexport.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from edgeexport.manifest import Manifest

ROLES = ("decoder", "encoder")
KINDS = ("key", "value")
TOKENIZER_FILE = "tokenizer/tokenizer.json"
EARLY_STOPPING = (True, False, "never")
DEFAULT_MAX_NEW_TOKENS = 32


def past_names(layers: int) -> list[str]:
    """Decoder inputs holding the self-attention cache, layer by layer, key before value."""
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in KINDS]


def present_names(layers: int) -> list[str]:
    """Decoder outputs holding the updated self-attention cache, in the order of :func:`past_names`."""
    return [f"present.{i}.{kind}" for i in range(layers) for kind in KINDS]


def empty_past_shape(shape: Sequence[int | str], batch: int) -> tuple[int, ...]:
    """``(batch, heads, 0, head_dim)``: an empty cache for a past input of the manifest ``shape``.

    Raises:
        ArtifactError: heads or head_dim are not fixed.
    """
    heads, head_dim = shape[1], shape[3]
    if not (isinstance(heads, int) and isinstance(head_dim, int)):
        raise ArtifactError(f"cache inputs must have fixed heads and head_dim, the manifest says {list(shape)}")
    return batch, heads, 0, head_dim


def cross_names(layers: int) -> list[str]:
    """Encoder outputs (and decoder inputs) holding the cross-attention key/values."""
    return [f"encoder_key_values.{i}.{kind}" for i in range(layers) for kind in KINDS]


@dataclass(frozen=True)
class TokenIds:
    """Special token ids of a generation model (None where the model has none).

    ``forced_bos``/``forced_eos`` are forced as the first/last generated token, as transformers does.
    """

    bos: int | None = None
    eos: tuple[int, ...] = ()
    pad: int | None = None
    decoder_start: int | None = None
    forced_bos: int | None = None
    forced_eos: int | None = None

    @property
    def first_decoder_token(self) -> int | None:
        """The token an encoder-decoder's decoder starts from: ``decoder_start``, else ``bos``."""
        return self.decoder_start if self.decoder_start is not None else self.bos

    def to_dict(self) -> dict[str, Any]:
        return {"bos": self.bos, "eos": list(self.eos), "pad": self.pad, "decoder_start": self.decoder_start,
                "forced_bos": self.forced_bos, "forced_eos": self.forced_eos}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenIds:
        eos = data.get("eos", [])
        if not (isinstance(eos, list) and all(_is_int(t) for t in eos)):
            raise ArtifactError("manifest generation.tokens.eos must be a list of token ids")
        singles = {key: data.get(key) for key in ("bos", "pad", "decoder_start", "forced_bos", "forced_eos")}
        for key, value in singles.items():
            if value is not None and not _is_int(value):
                raise ArtifactError(f"manifest generation.tokens.{key} must be a token id or null")
        return cls(eos=tuple(eos), **singles)


@dataclass(frozen=True)
class GenerationConfig:
    """How a decoder generates by default: the fields of transformers' ``GenerationConfig`` that
    :mod:`edgeexport.generator` applies, with their meaning there.

    Defaults are transformers' global defaults but for two kept from before this was recorded:
    ``top_k`` 0 (transformers: 50), and 32 new tokens when neither ``max_new_tokens`` nor
    ``max_length`` is set (transformers: ``max_length`` 20). Forced BOS/EOS and the decoder-start
    token are in :class:`TokenIds`.

    Attributes:
        max_new_tokens: Most tokens to generate per row; wins over ``max_length``.
        max_length: Most tokens of prompt (decoder-only) or decoder-start token plus new tokens.
        min_new_tokens: EOS is banned until this many tokens were generated; wins over ``min_length``.
        min_length: EOS is banned while prompt (or decoder-start token) plus new tokens are fewer.
        do_sample: Sample instead of choosing the most likely token(s).
        temperature: Divides the logits before sampling.
        top_k: Sample among the k most likely tokens only (0 = all).
        top_p: Sample among the most likely tokens whose probabilities sum to top_p.
        num_beams: Beams of beam search (1 = none).
        length_penalty: A finished beam scores its summed log-probabilities / length ** length_penalty.
        early_stopping: Beam search stops once num_beams beams have finished (True), when no running
            beam can likely do better (False), or only when none can (``"never"``).
        repetition_penalty: Divides positive (multiplies negative) scores of tokens already in the sequence.
        no_repeat_ngram_size: Bans the tokens that would repeat an n-gram of this size.
    """

    max_new_tokens: int | None = None
    max_length: int | None = None
    min_new_tokens: int | None = None
    min_length: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        """Parse and check a manifest's ``generation_config``; unknown keys (a newer writer's) are ignored.

        Raises:
            ArtifactError: a field of the wrong type or out of range.
        """
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for name, value in values.items():
            if not _has_type(cls.__dataclass_fields__[name].type, value):
                raise ArtifactError(f"manifest generation.generation_config.{name} has the wrong type: {value!r}")
        config = cls(**values)
        problem = config._problem(combined=False)
        if problem:
            raise ArtifactError(f"manifest generation.generation_config: {problem}")
        return config

    def updated(self, **options: Any) -> GenerationConfig:
        """This config with the options that are not None; ``early_stopping`` also takes ``"true"``/``"false"``.

        Raises:
            UsageError: an option of the wrong type or a bad value or combination.
        """
        given = {name: value for name, value in options.items() if value is not None}
        if isinstance(given.get("early_stopping"), str) and given["early_stopping"].lower() in ("true", "false"):
            given["early_stopping"] = given["early_stopping"].lower() == "true"
        for name, value in given.items():
            if name not in self.__dataclass_fields__:
                raise UsageError(f"unknown generation option {name!r}")
            if not _has_type(self.__dataclass_fields__[name].type, value):
                raise UsageError(f"{name} has the wrong type: {value!r}")
        config = dataclasses.replace(self, **given)
        problem = config._problem(combined=True)
        if problem:
            raise UsageError(problem)
        return config

    def new_tokens(self, start_length: int) -> int:
        """Most new tokens per row after ``start_length`` tokens (the prompt, or the decoder-start token).

        Raises:
            UsageError: ``max_length`` leaves no room for a new token.
        """
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is None:
            return DEFAULT_MAX_NEW_TOKENS
        if self.max_length <= start_length:
            raise UsageError(f"max_length {self.max_length} of the generation config leaves no new token after "
                             f"{start_length} prompt tokens; pass max_new_tokens (--max-new-tokens)")
        return self.max_length - start_length

    def min_total_length(self, start_length: int) -> int:
        """Length (start tokens included) below which EOS is banned, as transformers derives it."""
        return start_length + self.min_new_tokens if self.min_new_tokens is not None else self.min_length

    def summary(self) -> str:
        """The settings that differ from the defaults, e.g. ``num_beams=4, no_repeat_ngram_size=3``."""
        default = GenerationConfig()
        return ", ".join(f"{name}={value}" for name, value in self.to_dict().items() if value != getattr(default, name))

    def _problem(self, *, combined: bool) -> str | None:
        """The first bad value (and, when ``combined``, bad combination), as an error message."""
        checks = [
            (self.max_new_tokens is not None and self.max_new_tokens < 1,
             f"max_new_tokens must be at least 1, got {self.max_new_tokens}"),
            (self.max_length is not None and self.max_length < 1, f"max_length must be at least 1, got {self.max_length}"),
            (self.min_new_tokens is not None and self.min_new_tokens < 0,
             f"min_new_tokens must be >= 0, got {self.min_new_tokens}"),
            (self.min_length < 0, f"min_length must be >= 0, got {self.min_length}"),
            (not self.temperature > 0,
             f"temperature must be > 0, got {self.temperature}; use greedy decoding (do_sample=False) instead"),
            (self.top_k < 0, f"top_k must be >= 0 (0 = no top-k filter), got {self.top_k}"),
            (not 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.num_beams < 1, f"num_beams must be at least 1 (1 = no beam search), got {self.num_beams}"),
            (not math.isfinite(self.length_penalty), f"length_penalty must be a finite number, got {self.length_penalty}"),
            (self.early_stopping not in EARLY_STOPPING,
             f"early_stopping must be true, false or never, got {self.early_stopping!r}"),
            (not self.repetition_penalty > 0, f"repetition_penalty must be > 0 (1.0 = none), got {self.repetition_penalty}"),
            (self.no_repeat_ngram_size < 0, f"no_repeat_ngram_size must be >= 0 (0 = none), got {self.no_repeat_ngram_size}"),
            (combined and self.do_sample and self.num_beams > 1,
             (f"beam sampling (do_sample with num_beams={self.num_beams}) is not supported; decode greedily "
              "(do_sample=False, --greedy) or sample without beams (num_beams=1)")),
        ]
        return next((message for failed, message in checks if failed), None)


def _has_type(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits a :class:`GenerationConfig` field annotation (ints count as floats, bools as neither)."""
    if value is None:
        return "None" in annotation
    if isinstance(value, bool):
        return annotation.startswith("bool")
    if isinstance(value, int):
        return annotation.startswith(("int", "float"))
    if isinstance(value, float):
        return annotation.startswith("float")
    return isinstance(value, str) and "str" in annotation


@dataclass(frozen=True)
class GenerationSpec:
    """The ``generation`` block of a component's manifest.

    Attributes:
        role: ``decoder`` (runs every step) or ``encoder`` (runs once per prompt).
        past: Decoder inputs of the self-attention cache (empty for an encoder).
        present: Decoder outputs of the updated cache, in the order of ``past``.
        cross: Cross-attention key/values: the encoder's outputs and the decoder's inputs
            (empty for decoder-only models).
        tokens: Special token ids.
        tokenizer: Artifact-relative path of a ``tokenizers`` JSON file, if one was copied.
        config: How the decoder generates by default (written for decoders only; older manifests
            have none and decode greedily).
    """

    role: str
    past: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()
    tokens: TokenIds = field(default_factory=TokenIds)
    tokenizer: str | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.cross)

    def summary(self) -> str:
        """One line for ``edgeexport inspect``: role, cache layers, special tokens and tokenizer."""
        cache = (f"{len(self.past) // 2} layers (past_key_values.{{i}}.key|value -> present.{{i}}.key|value)"
                 if self.past else "")
        cross = f"cross {len(self.cross) // 2} layers of encoder_key_values.{{i}}.key|value" if self.cross else ""
        tokens = ", ".join(f"{k}={v}" for k, v in self.tokens.to_dict().items() if v not in (None, []))
        config = f"decodes with {self.config.summary() or 'greedy defaults'}" if self.role == "decoder" else ""
        return "; ".join(part for part in (self.role, cache, cross, tokens, config,
                                           f"tokenizer {self.tokenizer or 'none'}") if part)

    def to_dict(self) -> dict[str, Any]:
        config = {"generation_config": self.config.to_dict()} if self.role == "decoder" else {}
        return {"role": self.role, "cache": {"past": list(self.past), "present": list(self.present),
                                             "cross": list(self.cross)},
                "tokens": self.tokens.to_dict(), "tokenizer": self.tokenizer, **config}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationSpec:
        """Parse and check a ``generation`` block; raise :class:`ArtifactError` naming the bad field."""
        role = data.get("role")
        if role not in ROLES:
            raise ArtifactError(f"manifest generation.role must be one of {', '.join(ROLES)}, got {role!r}")
        cache = data.get("cache", {})
        lists = {key: cache.get(key, []) if isinstance(cache, dict) else None for key in ("past", "present", "cross")}
        for key, names in lists.items():
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise ArtifactError(f"manifest generation.cache.{key} must be a list of tensor names")
        if len(lists["past"]) != len(lists["present"]):
            raise ArtifactError("manifest generation.cache.past and .present must have the same length")
        tokenizer = data.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ArtifactError("manifest generation.tokenizer must be a path or null")
        tokens = data.get("tokens", {})
        if not isinstance(tokens, dict):
            raise ArtifactError("manifest generation.tokens must be an object")
        config = data.get("generation_config", {})
        if not isinstance(config, dict):
            raise ArtifactError("manifest generation.generation_config must be an object")
        return cls(role=role, past=tuple(lists["past"]), present=tuple(lists["present"]), cross=tuple(lists["cross"]),
                   tokens=TokenIds.from_dict(tokens), tokenizer=tokenizer, config=GenerationConfig.from_dict(config))

    @classmethod
    def of(cls, manifest: Manifest) -> GenerationSpec:
        """The generation block of a manifest; raise :class:`ArtifactError` when it has none."""
        if not manifest.generation:
            raise ArtifactError(f"the artifact of {manifest.model.get('name')} ({manifest.model.get('task')}) cannot "
                                "generate; convert it with --task causal-lm-with-past or seq2seq-lm-with-past")
        return cls.from_dict(manifest.generation)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
