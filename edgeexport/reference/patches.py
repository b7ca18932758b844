"""Export-time patches of transformers code: swap a function or method for an equivalent while a
model is captured, and restore it after (HF optimum's ``ModelPatcher`` idea).

A :class:`ModulePatch` names the attribute it replaces (``module.function`` or
``module.Class.method``) and the module classes that use it; :func:`applicable` picks the
patches a model uses, so other models are captured unchanged, and :func:`patched` swaps them in
for a block with ``unittest.mock.patch``. Each replacement computes the same values as the code
it replaces (the tests compare them on random tensors) and says in its docstring why the
original does not export. Two sets exist: :data:`EXPORT_PATCHES` here, applied to every
``torch.export`` capture (:func:`edgeexport.capture.export_program`), and Core ML's rank <= 5
rewrites in :mod:`edgeexport.mil.module_patches`.
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
