"""Export-time patches of transformers code: swap a function or method for an equivalent while a
model is captured, and restore it after (HF optimum's ``ModelPatcher`` idea).

A :class:`ModulePatch` names the attribute it replaces (``module.function`` or
``module.Class.method``) and the module classes that use it; :func:`applicable` picks the
patches a model uses, so other models are captured unchanged, and :func:`patched` swaps them in
for a block with ``unittest.mock.patch``. Each replacement computes the same values as the code
it replaces (the tests compare them on random tensors) and says in its docstring why the
original does not export. The sets: :data:`EXPORT_PATCHES` here, applied to every
``torch.export`` capture (:func:`edgeexport.capture.export_program`); :data:`OPENVINO_SDPA_PATCH`,
applied to every OpenVINO conversion from PyTorch; and Core ML's rank <= 5 rewrites in
:mod:`edgeexport.mil.module_patches`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
from torch import nn

_SCALED_DOT_PRODUCT_ATTENTION = torch.nn.functional.scaled_dot_product_attention
# The masked score of the additive mask: float16's minimum, finite in every precision OpenVINO computes in.
MASKED_SCORE = float(torch.finfo(torch.float16).min)


@dataclass(frozen=True)
class ModulePatch:
    """One attribute swapped during capture.

    Attributes:
        target: Dotted path of the attribute replaced, as ``unittest.mock.patch`` takes it.
        replacement: The equivalent swapped in.
        used_by: Class names of the modules that call it; the patch applies to a model holding one.
    """

    target: str
    replacement: Callable[..., Any]
    used_by: tuple[str, ...]

    @property
    def name(self) -> str:
        """The replaced attribute below ``transformers.models`` (``swin.modeling_swin.window_partition``)."""
        return self.target.removeprefix("transformers.models.")


def applicable(model: nn.Module, patches: Sequence[ModulePatch]) -> list[ModulePatch]:
    """The patches whose users are among ``model``'s modules (the only ones worth applying)."""
    classes = {type(module).__name__ for module in model.modules()}
    return [patch for patch in patches if classes & set(patch.used_by)]


@contextlib.contextmanager
def patched(patches: Sequence[ModulePatch]) -> Iterator[None]:
    """Swap in every patch for the block; the originals are back on exit, errors included."""
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(mock.patch(patch.target, patch.replacement))
        yield


def vit_interpolate_pos_encoding(self: nn.Module, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``ViTEmbeddings.interpolate_pos_encoding`` without its shortcut at the trained grid.

    transformers returns the position table unchanged when the image has the trained number of
    patches, except under ``torch.jit`` tracing; ``torch.export`` is no jit trace, so a model
    captured at the trained size would keep that table at every size. Interpolating the table
    to its own size changes nothing (bicubic weights 0, 1, 0, 0), so the values are the same.
    """
    num_positions = self.position_embeddings.shape[1] - 1
    dim = embeddings.shape[-1]
    side = math.isqrt(num_positions)
    grid = self.position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(height // self.patch_size, width // self.patch_size), mode="bicubic",
                                     align_corners=False)
    return torch.cat((self.position_embeddings[:, :1], grid.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)


EXPORT_PATCHES: tuple[ModulePatch, ...] = (
    ModulePatch("transformers.models.vit.modeling_vit.ViTEmbeddings.interpolate_pos_encoding",
                vit_interpolate_pos_encoding, ("ViTEmbeddings",)),
)


def sdpa_with_additive_mask(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attn_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``scaled_dot_product_attention`` with a boolean mask handed over as an additive one.

    OpenVINO's conversion of SDPA with a boolean mask gives NaN for a query row that sees no key,
    where torch gives zeros (openvinotoolkit/openvino#31630, #35959). Left padding under a causal
    mask makes such rows, and through the cache their NaN reaches every later token of the row.
    An additive mask (:data:`MASKED_SCORE` where masked) never takes that path, and rows that see
    no key are set to zero as torch sets them, so the values are the same.
    """
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return _SCALED_DOT_PRODUCT_ATTENTION(query, key, value, attn_mask, *args, **kwargs)
    additive = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, MASKED_SCORE)
    attended = _SCALED_DOT_PRODUCT_ATTENTION(query, key, value, additive, *args, **kwargs)
    return attended.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)


OPENVINO_SDPA_PATCH = ModulePatch("torch.nn.functional.scaled_dot_product_attention", sdpa_with_additive_mask, ())
