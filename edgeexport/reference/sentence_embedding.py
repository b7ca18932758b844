"""sentence-transformers folders as one graph: the transformer, its pooling, dense layers and normalization.

A sentence-transformers model is an ordered list of small modules in ``modules.json`` (Transformer,
Pooling, optional Dense and Normalize), each in a sub-folder with its own ``config.json``. This module
reads that list as data and builds one ``torch.nn.Module`` computing what
``SentenceTransformer.encode`` computes from token ids, so the exported graph ends in the embedding.
It is written here rather than imported because sentence-transformers is not a dependency of
edgeexport (it pins its own transformers), and the four modules are a few lines of tensor algebra each.
A module that cannot go into a graph is refused in one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgeexport.errors import ModelLoadError, UnsupportedError

MODULES_FILE = "modules.json"
SENTENCE_CONFIG = "sentence_bert_config.json"
# Pooling modes in the order sentence_transformers.models.Pooling concatenates them.
POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")
UNSUPPORTED_POOLING = ("weightedmean_tokens", "lasttoken")
ACTIVATIONS = {"Tanh": torch.nn.Tanh, "Identity": torch.nn.Identity, "ReLU": torch.nn.ReLU, "GELU": torch.nn.GELU,
               "Sigmoid": torch.nn.Sigmoid}
MASKED_MAX = -1e9  # sentence-transformers' fill value for padded tokens under max pooling


@dataclass(frozen=True)
class SentenceModules:
    """What ``modules.json`` declares, read and checked: the transformer's folder, the pooling modes,
    the dense layers' folders, whether embeddings are normalized, and the longest input in tokens."""

    transformer: Path
    pooling: tuple[str, ...]
    dense: tuple[Path, ...]
    normalize: bool
    max_length: int | None

    def describe(self) -> str:
        """``mean pooling, normalize``: the pieces after the transformer, for the manifest's architecture."""
        pieces = [f"{'+'.join(m.removesuffix('_tokens').removesuffix('_token') for m in self.pooling)} pooling",
                  *(["dense"] * len(self.dense)), *(["normalize"] if self.normalize else [])]
        return ", ".join(pieces)


def is_sentence_transformers(folder: Path) -> bool:
    """A folder saved by sentence-transformers (it holds ``modules.json``)."""
    return (folder / MODULES_FILE).is_file()


def read_modules(folder: Path) -> SentenceModules:
    """Read and check ``modules.json``.

    Raises:
        ModelLoadError: the file is unreadable or names no Transformer or Pooling module.
        UnsupportedError: a module that cannot go into the graph (named, with its path).
    """
    try:
        entries = json.loads((folder / MODULES_FILE).read_text())
        kinds = [(str(e["type"]).rsplit(".", 1)[-1], str(e.get("path", "")), e) for e in entries]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"{str(folder / MODULES_FILE)!r} cannot be read as a sentence-transformers module list "
                             f"({type(exc).__name__}); save the model again with SentenceTransformer.save()") from None
    transformer, pooling, dense, normalize = None, None, [], False
    for kind, path, entry in kinds:
        if kind == "Transformer":
            transformer = folder / path
        elif kind == "Pooling":
            pooling = _pooling_modes(folder / path)
        elif kind == "Dense":
            dense.append(folder / path)
        elif kind == "Normalize":
            normalize = True
        else:
            raise UnsupportedError(f"sentence-transformers module {entry['type']!r} ({path or 'the top folder'}) cannot "
                                   "go into the graph; edgeexport converts Transformer, Pooling, Dense and Normalize "
                                   "modules (convert the transformer alone with --task feature-extraction)")
    if transformer is None or pooling is None:
        raise ModelLoadError(f"{str(folder / MODULES_FILE)!r} names no Transformer and Pooling module; pass "
                             "--task feature-extraction to convert the transformer alone")
    settings = _json(transformer / SENTENCE_CONFIG)
    max_length = settings.get("max_seq_length")
    return SentenceModules(transformer, pooling, tuple(dense), normalize,
                           int(max_length) if isinstance(max_length, int) else None)


def _pooling_modes(folder: Path) -> tuple[str, ...]:
    config = _json(folder / "config.json")
    for mode in UNSUPPORTED_POOLING:
        if config.get(f"pooling_mode_{mode}"):
            raise UnsupportedError(f"sentence-transformers pooling mode {mode!r} ({folder.name}) is not supported; "
                                   f"edgeexport pools with {', '.join(POOLING_MODES)}")
    modes = tuple(mode for mode in POOLING_MODES if config.get(f"pooling_mode_{mode}"))
    if not modes:
        raise ModelLoadError(f"{str(folder / 'config.json')!r} sets no pooling mode; save the model again")
    return modes


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class SentenceEmbedding(torch.nn.Module):
    """Token ids -> ``sentence_embedding``: ``transformer``'s last hidden state pooled over the attention mask,
    through the dense layers, L2-normalized when the folder says so (``SentenceTransformer.encode``'s formulas)."""

    def __init__(self, transformer: torch.nn.Module, modules: SentenceModules) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = modules.pooling
        self.dense = torch.nn.Sequential(*(_dense(path) for path in modules.dense))
        self.normalize = modules.normalize
        self.config = transformer.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        inputs.pop("return_dict", None)
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        counts = mask.sum(1).clamp(min=1e-9)
        pooled = {"cls_token": lambda: tokens[:, 0],
                  "max_tokens": lambda: tokens.masked_fill(mask == 0, MASKED_MAX).max(1).values,
                  "mean_tokens": lambda: (tokens * mask).sum(1) / counts,
                  "mean_sqrt_len_tokens": lambda: (tokens * mask).sum(1) / counts.sqrt()}
        embedding = self.dense(torch.cat([pooled[mode]() for mode in self.pooling], dim=-1))
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
        return {"sentence_embedding": embedding}


def _dense(folder: Path) -> torch.nn.Module:
    """A ``sentence_transformers.models.Dense`` folder as Linear + activation."""
    config = _json(folder / "config.json")
    activation_name = str(config.get("activation_function", "torch.nn.modules.activation.Tanh")).rsplit(".", 1)[-1]
    if activation_name not in ACTIVATIONS or not {"in_features", "out_features"} <= config.keys():
        raise UnsupportedError(f"sentence-transformers Dense module {folder.name!r} (activation {activation_name!r}) "
                               f"is not supported; edgeexport maps the activations {', '.join(ACTIVATIONS)}")
    linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]), bias=bool(config.get("bias", True)))
    state = _dense_weights(folder)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return torch.nn.Sequential(linear, ACTIVATIONS[activation_name]())


def _dense_weights(folder: Path) -> dict[str, torch.Tensor]:
    safe = folder / "model.safetensors"
    if safe.is_file():
        from safetensors.torch import load_file

        return load_file(str(safe))
    raise ModelLoadError(f"Dense module {folder.name!r} has no model.safetensors; save the model again with "
                         "safetensors (pickled weights are not loaded)")
