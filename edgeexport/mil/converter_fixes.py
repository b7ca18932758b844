"""Fixes for coremltools' PyTorch frontend, registered in its op registry (``register_torch_op``).

Importing this module registers every fix once. Each fix says which model needs it and why;
remove a fix when the coremltools release pinned by the ``coreml`` extra fixes it upstream.
This module uses coremltools internals (``frontend.torch.ops``); the pin keeps them stable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch import ops
from coremltools.converters.mil.frontend.torch.ssa_passes import torch_upsample_to_core_upsample as upsample
from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op
from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING, NUM_TO_NUMPY_DTYPE
from coremltools.converters.mil.mil.types import builtin_to_string, is_int, nptype_from_builtin
from coremltools.converters.mil.mil.types.symbolic import any_symbolic

ORIGINAL_GROUP_NORM = ops.group_norm
ORIGINAL_LINSPACE = ops.linspace
ORIGINAL_UPSAMPLE_NEAREST2D = ops.upsample_nearest2d
ORIGINAL_FLOOR_DIVIDE = ops.floor_divide


# transformers 5 builds attention masks with ``q_idx.new_ones((), dtype=torch.bool)``
# (masking_utils.and_masks); coremltools 9.0 maps new_zeros and new_full, not new_ones.
# Needed by GPT-2, BERT, BART, T5 and DETR.
@register_torch_op
def new_ones(context: Any, node: Any) -> None:
    """``tensor.new_ones(size, dtype=...)``: a tensor of ones, of ``tensor``'s dtype unless given."""
    inputs = ops._get_inputs(context, node, min_expected=2)
    source, size = inputs[0], inputs[1]
    dtype = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    numpy_dtype = NUM_TO_NUMPY_DTYPE[int(dtype.val)] if dtype is not None else None
    if not isinstance(size, list) and size.can_be_folded_to_const():
        shape = tuple(int(d) for d in np.atleast_1d(size.val)) if np.ndim(size.val) else ()
        value = np.ones(shape, dtype=numpy_dtype or nptype_from_builtin(source.dtype))
        context.add(mb.const(val=value, name=node.name))
        return
    ones = ops._make_fill_op(size, 1.0, node.name + "_fill")
    target = NUM_TO_DTYPE_STRING[int(dtype.val)] if dtype is not None else builtin_to_string(source.dtype)
    context.add(ops._cast_to(ones, target, node.name))


# coremltools' ``_cast`` folds ``int(t)`` of a constant one-element tensor with ``int(x.val)``;
# numpy 2.4 rejects int() of arrays with ndim > 0 ("only 0-dimensional arrays can be converted
# to Python scalars"). Sizes become such arrays (``prim::NumToTensor`` folds to shape (1,)).
# Needed by Swin, Mask2Former's backbone (it pads to whole windows, and its window size is a
# tensor when tracing), to get to Core ML's real limit for that model (tensor rank <= 5).
@register_torch_op(torch_alias=["int"], override=True)
def _int(context: Any, node: Any) -> None:
    """``int(t)``: a constant one-element ``t`` folds to a Python int, the rest as coremltools does."""
    x = ops._get_inputs(context, node, expected=1)[0]
    if x.can_be_folded_to_const() and np.ndim(x.val) > 0 and np.size(x.val) == 1:
        context.add(mb.const(val=int(np.asarray(x.val).item()), name=node.name))
        return
    ops._cast(context, node, int, "int32")


# coremltools 9.0 translates Python's ``//`` on sizes (``floordiv``) as ``torch.floor_divide`` and casts
# the result to fp32; the int quotient then meets int sizes in a shape ("Tensors in 'values' of the
# concat op should share the same data type"). Needed by ViT with a dynamic image size captured by
# torch.export (its patch grid, height // patch_size, sizes the attention mask).
@register_torch_op(override=True)
def floordiv(context: Any, node: Any) -> None:
    """``a // b``: an int quotient of ints, as Python computes it; other dtypes as coremltools does."""
    x, y = ops.promote_input_dtypes(ops._get_inputs(context, node, expected=2))
    if not (is_int(x.dtype) and is_int(y.dtype)):
        ORIGINAL_FLOOR_DIVIDE(context, node)
        return
    context.add(mb.floor_div(x=x, y=y, name=node.name))


# coremltools folds a constant linspace with ``np.linspace(start.val, end.val, n)``; when start
# and end are one-element arrays (``height - 0.5`` of a traced size) the result is (n, 1), not
# (n,), and the meshgrid that follows rejects it. Needed by Mask2Former (its deformable
# attention's reference points), to get to Core ML's real limit for that model (rank <= 5).
@register_torch_op(override=True)
def linspace(context: Any, node: Any) -> None:
    """``torch.linspace(start, end, steps)``, folded to a 1-D constant when all three are known."""
    start, end, steps = ops._get_inputs(context, node, min_expected=3)[:3]
    if not all(v.can_be_folded_to_const() for v in (start, end, steps)):
        ORIGINAL_LINSPACE(context, node)
        return
    values = np.linspace(_scalar(start.val), _scalar(end.val), int(_scalar(steps.val)), dtype=np.float32)
    context.add(mb.const(val=values, name=node.name))


def _scalar(value: Any) -> float:
    return np.asarray(value).reshape(()).item()


# coremltools' group_norm puts the batch dim, a Python symbol when the batch is dynamic, into
# a constant shape list ("Cannot add const [is0, 16, 1]"). Needed by Wav2Vec2 (its first conv
# layer's group norm) with a dynamic batch. Static shapes keep coremltools' own translation.
@register_torch_op(override=True)
def group_norm(context: Any, node: Any) -> None:
    """``group_norm(x, groups, weight, bias, eps, cudnn)`` with the grouped shape computed at run time."""
    inputs = ops._get_inputs(context, node, min_expected=2)
    x = inputs[0]
    if not any_symbolic(x.shape):
        ORIGINAL_GROUP_NORM(context, node)
        return
    groups = int(inputs[1].val)
    weight, bias = (inputs[2] if len(inputs) > 2 else None), (inputs[3] if len(inputs) > 3 else None)
    eps = float(inputs[4].val) if len(inputs) > 4 else 1e-5
    context.add(_group_norm(x, groups, weight, bias, eps), node.name)


def _group_norm(x: Any, groups: int, weight: Any, bias: Any, eps: float) -> Any:
    """Normalise ``x`` (N, C, ...) over groups of channels; every reshape takes a run-time shape."""
    channels, rank = int(x.shape[1]), len(x.shape)
    shape = mb.shape(x=x)
    grouped_shape = mb.concat(values=[mb.slice_by_size(x=shape, begin=[0], size=[1]),
                                      np.array([groups, channels // groups], dtype=np.int32),
                                      mb.slice_by_size(x=shape, begin=[2], size=[-1])], axis=0)
    grouped = mb.reshape(x=x, shape=grouped_shape)
    axes = list(range(2, rank + 1))
    centred = mb.sub(x=grouped, y=mb.reduce_mean(x=grouped, axes=axes, keep_dims=True))
    variance = mb.reduce_mean(x=mb.mul(x=centred, y=centred), axes=axes, keep_dims=True)
    normalised = mb.reshape(x=mb.real_div(x=centred, y=mb.sqrt(x=mb.add(x=variance, y=eps))), shape=shape)
    affine_shape = [1, channels] + [1] * (rank - 2)
    if weight is not None:
        normalised = mb.mul(x=normalised, y=mb.reshape(x=weight, shape=affine_shape))
    if bias is not None:
        normalised = mb.add(x=normalised, y=mb.reshape(x=bias, shape=affine_shape))
    return normalised


# For nearest interpolation to a run-time size (``interpolate(mask, size=features.shape[-2:])``)
# coremltools emits a placeholder op that a later pass must turn into a fixed scale factor; a
# size that is not a multiple of the input's ("Unable to map torch_upsample_nearest_neighbor to
# core upsample") fails. Needed by DETR (its pixel mask, resized to the backbone's feature map)
# with a dynamic image size. Sizes the pass can resolve keep coremltools' translation.
@register_torch_op(torch_alias=["upsample_nearest2d.vec"], override=True)
def upsample_nearest2d(context: Any, node: Any) -> None:
    """Nearest interpolation; to a run-time size it gathers rows and columns ``floor(i * in / out)``."""
    inputs = ops._get_inputs(context, node, min_expected=2)
    x, size = inputs[0], inputs[1]
    if not isinstance(size, list) or _scale_resolvable(x, size):
        ORIGINAL_UPSAMPLE_NEAREST2D(context, node)
        return
    shape = mb.shape(x=x)
    for axis, out in zip((2, 3), size):
        out = mb.cast(x=out, dtype="int32")
        source = mb.floor_div(x=mb.mul(x=mb.range_1d(start=0, end=out, step=1), y=mb.gather(x=shape, indices=axis)),
                              y=out)
        x = mb.gather(x=x, indices=source, axis=axis)
    context.add(mb.identity(x=x, name=node.name))


def _scale_resolvable(x: Any, size: list[Any]) -> bool:
    """Whether coremltools' upsample pass can trace ``size`` back to constant scale factors of ``x``."""
    return all(out.val is None and (upsample._try_get_upsample_factor_pattern_1(out.op) is not None
                                    or upsample._try_get_upsample_factor_pattern_2(out.op, axis, x) is not None)
               for axis, out in zip((2, 3), size))


# coremltools 9.0 has no bicubic interpolation. ViT interpolates its position table (bicubic,
# to the image's patch grid) so that it runs at any image size; the grid size is known only at
# run time. Needed by ViT with a dynamic image size.
CUBIC_A = -0.75  # PyTorch's cubic convolution coefficient


@register_torch_op(torch_alias=["upsample_bicubic2d.vec"])
def upsample_bicubic2d(context: Any, node: Any) -> None:
    """Bicubic interpolation of (N, C, H, W) to a (run-time) ``size``, as PyTorch computes it: each axis
    in turn, four neighbours (clamped at the border) weighted by the cubic convolution kernel."""
    inputs = ops._get_inputs(context, node, min_expected=3)
    x, size, align_corners = inputs[0], inputs[1], bool(inputs[2].val)
    if size is None or (not isinstance(size, list) and size.val is None and size.rank != 1):
        raise NotImplementedError("upsample_bicubic2d without an output size (scale factors only)")
    sizes = size if isinstance(size, list) else [mb.gather(x=size, indices=i) for i in (0, 1)]
    for axis, out in zip((2, 3), sizes):
        x = _bicubic_axis(x, axis, mb.cast(x=out, dtype="int32"), align_corners)
    context.add(mb.identity(x=x, name=node.name))


def _bicubic_axis(x: Any, axis: int, out: Any, align_corners: bool) -> Any:
    """Bicubic interpolation of ``x`` along ``axis`` to ``out`` (an int32 scalar) points."""
    size = mb.cast(x=mb.gather(x=mb.shape(x=x), indices=axis), dtype="fp32")
    points = mb.cast(x=mb.range_1d(start=0, end=out, step=1), dtype="fp32")
    out_float = mb.cast(x=out, dtype="fp32")
    if align_corners:  # PyTorch: (in - 1) / (out - 1), 0 for a single output point
        scale = mb.real_div(x=mb.sub(x=size, y=1.0), y=mb.maximum(x=mb.sub(x=out_float, y=1.0), y=1.0))
        source = mb.mul(x=points, y=scale)
    else:
        source = mb.sub(x=mb.mul(x=mb.add(x=points, y=0.5), y=mb.real_div(x=size, y=out_float)), y=0.5)
    floor = mb.floor(x=source)
    t = mb.sub(x=source, y=floor)
    last = mb.sub(x=size, y=1.0)
    result = None
    for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(t)):
        index = mb.cast(x=mb.clip(x=mb.add(x=floor, y=float(offset)), alpha=0.0, beta=last), dtype="int32")
        if axis == 2:
            weight = mb.expand_dims(x=weight, axes=[-1])
        term = mb.mul(x=mb.gather(x=x, indices=index, axis=axis), y=weight)
        result = term if result is None else mb.add(x=result, y=term)
    return result


def _cubic_weights(t: Any) -> list[Any]:
    """The four weights of the neighbours at offsets -1, 0, 1, 2 of a point ``t`` past the floor."""
    def near(d: Any) -> Any:  # |d| <= 1: ((A + 2) d - (A + 3)) d^2 + 1
        return mb.add(x=mb.mul(x=mb.sub(x=mb.mul(x=d, y=CUBIC_A + 2), y=CUBIC_A + 3), y=mb.mul(x=d, y=d)), y=1.0)

    def far(d: Any) -> Any:  # 1 < |d| < 2: ((A d - 5A) d + 8A) d - 4A
        inner = mb.add(x=mb.mul(x=mb.sub(x=mb.mul(x=d, y=CUBIC_A), y=5 * CUBIC_A), y=d), y=8 * CUBIC_A)
        return mb.sub(x=mb.mul(x=inner, y=d), y=4 * CUBIC_A)

    return [far(mb.add(x=t, y=1.0)), near(t), near(mb.sub(x=1.0, y=t)), far(mb.sub(x=2.0, y=t))]

