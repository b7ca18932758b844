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
these names in layer order, the special token ids and the tokenizer file if one was copied.
This module imports neither torch nor a runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeexport.errors import ArtifactError

if TYPE_CHECKING:
    from edgeexport.artifact import Manifest

ROLES = ("decoder", "encoder")
KINDS = ("key", "value")
TOKENIZER_FILE = "tokenizer/tokenizer.json"


def past_names(layers: int) -> list[str]:
    """Decoder inputs holding the self-attention cache, layer by layer, key before value."""
    return [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in KINDS]


def present_names(layers: int) -> list[str]:
    """Decoder outputs holding the updated self-attention cache, in the order of :func:`past_names`."""
    return [f"present.{i}.{kind}" for i in range(layers) for kind in KINDS]


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
    """

    role: str
    past: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    cross: tuple[str, ...] = ()
    tokens: TokenIds = field(default_factory=TokenIds)
    tokenizer: str | None = None

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.cross)

    def summary(self) -> str:
        """One line for ``edgeexport inspect``: role, cache layers, special tokens and tokenizer."""
        cache = (f"{len(self.past) // 2} layers (past_key_values.{{i}}.key|value -> present.{{i}}.key|value)"
                 if self.past else "")
        cross = f"cross {len(self.cross) // 2} layers of encoder_key_values.{{i}}.key|value" if self.cross else ""
        tokens = ", ".join(f"{k}={v}" for k, v in self.tokens.to_dict().items() if v not in (None, []))
        return "; ".join(part for part in (self.role, cache, cross, tokens, f"tokenizer {self.tokenizer or 'none'}")
                         if part)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "cache": {"past": list(self.past), "present": list(self.present),
                                             "cross": list(self.cross)},
                "tokens": self.tokens.to_dict(), "tokenizer": self.tokenizer}

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
        return cls(role=role, past=tuple(lists["past"]), present=tuple(lists["present"]), cross=tuple(lists["cross"]),
                   tokens=TokenIds.from_dict(tokens), tokenizer=tokenizer)

    @classmethod
    def of(cls, manifest: Manifest) -> GenerationSpec:
        """The generation block of a manifest; raise :class:`ArtifactError` when it has none."""
        if not manifest.generation:
            raise ArtifactError(f"the artifact of {manifest.model.get('name')} ({manifest.model.get('task')}) cannot "
                                "generate; convert it with --task causal-lm-with-past or seq2seq-lm-with-past")
        return cls.from_dict(manifest.generation)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
