"""PyTorch module patches applied while capturing a model for Core ML, and restored after.

Core ML allows tensors of rank <= 5 ("Core ML only supports tensors with rank <= 5"). Some
transformers modules reshape through rank 6 on the way to a rank-4 result; each patch here
swaps one transformers function or method for an equivalent that stays at rank <= 5 (the same
values, bit for bit: tests/test_module_patches.py checks each against the original on random
tensors). Only the Core ML capture applies them, and only those whose modules the model holds
(:func:`edgeexport.reference.patches.applicable`), so other targets' graphs and other models are
unchanged. A patch names the transformers code it replaces; remove it when Core ML lifts the limit.

Exporter side only: imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgeexport.reference.patches import ModulePatch

SWIN = "transformers.models.swin.modeling_swin"
MASK2FORMER = "transformers.models.mask2former.modeling_mask2former"


def window_partition(input_feature: torch.Tensor, window_size: int) -> torch.Tensor:
    """Swin's ``window_partition`` (B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C) through rank 5.

    transformers views the input as (B, H/ws, ws, W/ws, ws, C) (rank 6); folding the batch into
    the window rows, (B * H/ws, ws, W/ws, ws, C), gives the same memory order at rank 5.
    """
    batch_size, height, width, num_channels = input_feature.shape
    rows = input_feature.view(batch_size * (height // window_size), window_size, width // window_size, window_size,
                              num_channels)
    return rows.transpose(1, 2).contiguous().view(-1, window_size, window_size, num_channels)


def window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """Swin's ``window_reverse``, the inverse of :func:`window_partition`, through rank 5
    ((B * H/ws, W/ws, ws, ws, C) instead of transformers' (B, H/ws, W/ws, ws, ws, C))."""
    num_channels = windows.shape[-1]
    rows = windows.view(-1, width // window_size, window_size, window_size, num_channels)
    return rows.transpose(1, 2).contiguous().view(-1, height, width, num_channels)


def deformable_attention_forward(self: nn.Module, hidden_states: torch.Tensor, *, attention_mask: torch.Tensor | None,
                                 encoder_hidden_states: torch.Tensor, reference_points: torch.Tensor,
                                 spatial_shapes_list: Sequence[tuple[int, int]],
                                 position_embeddings: torch.Tensor | None = None,
                                 **unused: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward`` through rank 5.

    transformers keeps sampling offsets and locations as (B, Q, heads, levels, points, 2) (rank 6);
    here the last two dims are one, (B, Q, heads, levels, points * 2), with x, y interleaved as
    before, so every element is computed by the same operations. Mask2Former's encoder, the only
    caller, passes 2-D reference points (B, Q, levels, 2) by keyword; what this forward does not
    use (the encoder mask, level start indices, output_attentions) arrives in ``unused``.
    """
    if position_embeddings is not None:
        hidden_states = self.with_pos_embed(hidden_states, position_embeddings)
    batch_size, num_queries, _ = hidden_states.shape
    _, sequence_length, _ = encoder_hidden_states.shape
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(attention_mask[..., None], float(0))
    value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
    sampling_offsets = self.sampling_offsets(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points * 2)
    attention_weights = self.attention_weights(hidden_states).view(
        batch_size, num_queries, self.n_heads, self.n_levels * self.n_points)
    attention_weights = nn.functional.softmax(attention_weights, -1).view(
        batch_size, num_queries, self.n_heads, self.n_levels, self.n_points)
    offset_normalizer = torch.tensor([[width, height] for height, width in spatial_shapes_list], dtype=torch.long,
                                     device=reference_points.device).repeat(1, self.n_points)
    sampling_locations = reference_points.repeat(1, 1, 1, self.n_points)[:, :, None] + sampling_offsets / offset_normalizer
    output = multi_scale_deformable_attention(value, spatial_shapes_list, sampling_locations, attention_weights)
    return self.output_proj(output), attention_weights


def multi_scale_deformable_attention(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                                     sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """transformers' ``multi_scale_deformable_attention`` with sampling locations as
    (B, Q, heads, levels, points * 2) instead of (B, Q, heads, levels, points, 2)."""
    batch_size, _, num_heads, hidden_dim = value.shape
    _, num_queries, _, num_levels, num_coordinates = sampling_locations.shape
    num_points = num_coordinates // 2
    value_list = value.split([height * width for height, width in spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        value_level = value_list[level].flatten(2).transpose(1, 2).reshape(batch_size * num_heads, hidden_dim,
                                                                           height, width)
        grid = sampling_grids[:, :, :, level].transpose(1, 2).reshape(batch_size * num_heads, num_queries,
                                                                      num_points, 2)
        sampled.append(nn.functional.grid_sample(value_level, grid, mode="bilinear", padding_mode="zeros",
                                                 align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch_size, num_heads * hidden_dim,
                                                                                num_queries)
    return output.transpose(1, 2).contiguous()


RANK5_PATCHES: tuple[ModulePatch, ...] = (
    ModulePatch(f"{SWIN}.window_partition", window_partition, ("SwinLayer",)),
    ModulePatch(f"{SWIN}.window_reverse", window_reverse, ("SwinLayer",)),
    ModulePatch(f"{MASK2FORMER}.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention.forward",
                deformable_attention_forward, ("Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention",)),
)
