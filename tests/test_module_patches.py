"""The Core ML capture's module patches (``edgeexport.mil.module_patches``): each rank-5 rewrite gives
exactly transformers' values on random tensors, keeps every traced tensor at rank <= 5 (transformers'
own code reaches rank 6), applies only to models that use the patched code, and is undone on exit."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.mask2former import modeling_mask2former
from transformers.models.swin import modeling_swin

from edgeexport.mil import module_patches
from edgeexport.mil.module_patches import RANK5_PATCHES
from edgeexport.reference.patches import applicable, patched

DeformableAttention = modeling_mask2former.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention
LEVELS = [(6, 5), (3, 3), (2, 1)]  # (height, width) of each feature level: odd sizes, a single column


def _swin_model() -> torch.nn.Module:
    """A tiny Swin whose first stage pads (7x7 patches, window 4) and shifts its windows (depth 2)."""
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=28, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[1, 2],
                                     window_size=4)
    return transformers.SwinModel(config).eval()


def _deformable_inputs(batch: int = 2, queries: int | None = None) -> dict[str, object]:
    """Keyword inputs of the deformable attention as Mask2Former's encoder passes them (self-attention)."""
    length = sum(h * w for h, w in LEVELS)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch, queries or length, 16, generator=generator)
    return {"hidden_states": hidden, "encoder_hidden_states": hidden,
            "attention_mask": torch.rand(batch, length, generator=generator) < 0.2,
            "position_embeddings": torch.randn(batch, length, 16, generator=generator),
            "reference_points": torch.rand(batch, length, len(LEVELS), 2, generator=generator),
            "spatial_shapes_list": LEVELS, "level_start_index": None, "output_attentions": False}


def _deformable_attention() -> torch.nn.Module:
    torch.manual_seed(0)
    return DeformableAttention(embed_dim=16, num_heads=2, n_levels=len(LEVELS), n_points=3).eval()


@pytest.mark.parametrize(("batch", "height", "width", "window"), [(1, 8, 8, 4), (3, 12, 20, 4), (2, 14, 7, 7),
                                                                   (2, 6, 4, 2)])
def test_window_partition_and_reverse_equal_transformers(batch: int, height: int, width: int, window: int) -> None:
    features = torch.randn(batch, height, width, 5)

    windows = module_patches.window_partition(features, window)
    assert torch.equal(windows, modeling_swin.window_partition(features, window))
    assert torch.equal(module_patches.window_reverse(windows, window, height, width),
                       modeling_swin.window_reverse(windows, window, height, width))
    assert torch.equal(module_patches.window_reverse(windows, window, height, width), features)


def test_deformable_attention_equals_transformers() -> None:
    attention, inputs = _deformable_attention(), _deformable_inputs()
    with torch.no_grad():
        expected = attention(**inputs)
        with patched(applicable(attention, RANK5_PATCHES)):
            patched_output = attention(**inputs)

    assert all(torch.equal(a, b) for a, b in zip(patched_output, expected))
    assert patched_output[0].shape == (2, sum(h * w for h, w in LEVELS), 16)


def test_patched_swin_equals_transformers() -> None:
    swin = _swin_model()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = swin(pixels).last_hidden_state
        with patched(applicable(swin, RANK5_PATCHES)):
            assert torch.equal(swin(pixels).last_hidden_state, expected)


def _largest_rank(module: torch.nn.Module, *args: torch.Tensor) -> int:
    """The largest rank of any tensor in ``module``'s traced graph."""
    with torch.no_grad():
        graph = torch.jit.trace(module, args, strict=False, check_trace=False).inlined_graph
    ranks = [value.type().dim() for node in graph.nodes() for value in node.outputs()
             if isinstance(value.type(), torch.TensorType) and value.type().dim() is not None]
    return max(ranks)


class _Deformable(torch.nn.Module):
    """The deformable attention with tensor-only arguments, for tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = _deformable_attention()

    def forward(self, hidden: torch.Tensor, reference_points: torch.Tensor) -> torch.Tensor:
        return self.attention(hidden_states=hidden, encoder_hidden_states=hidden, attention_mask=None,
                              reference_points=reference_points, spatial_shapes_list=LEVELS)[0]


@pytest.mark.parametrize("model", ["swin", "deformable attention"])
def test_patches_keep_every_traced_tensor_at_rank_5(model: str) -> None:
    inputs = _deformable_inputs()
    module, args = ((_swin_model(), (torch.randn(2, 3, 28, 28),)) if model == "swin" else
                    (_Deformable().eval(), (inputs["hidden_states"], inputs["reference_points"])))

    assert _largest_rank(module, *args) == 6, "transformers' own code reaches rank 6"
    with patched(applicable(module, RANK5_PATCHES)):
        assert _largest_rank(module, *args) <= 5


def test_only_the_patches_a_model_uses_apply_and_the_originals_come_back() -> None:
    originals = (modeling_swin.window_partition, modeling_swin.window_reverse, DeformableAttention.forward)
    swin = _swin_model()

    assert [p.name for p in applicable(swin, RANK5_PATCHES)] == ["swin.modeling_swin.window_partition",
                                                  "swin.modeling_swin.window_reverse"]
    assert [p.name for p in applicable(_deformable_attention(), RANK5_PATCHES)] == [
        "mask2former.modeling_mask2former.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward"]
    assert applicable(torch.nn.Linear(2, 2), RANK5_PATCHES) == []
    with pytest.raises(RuntimeError, match="on purpose"), patched(RANK5_PATCHES):
        assert modeling_swin.window_partition is module_patches.window_partition
        assert DeformableAttention.forward is module_patches.deformable_attention_forward
        raise RuntimeError("fails on purpose")
    assert (modeling_swin.window_partition, modeling_swin.window_reverse, DeformableAttention.forward) == originals
