"""A reference interpreter for Core ML ML Programs, for machines where Core ML cannot run (Linux).

The saved ``.mlpackage`` is reloaded into a MIL program with coremltools' milproto loader (a
private copy: running it overwrites its variables) and its ``main`` function is executed op by
op with numpy. Ops that coremltools can constant-fold run coremltools' own ``value_inference``;
the others have numpy implementations in :data:`NUMPY_OPS`. Before an op runs, each input
variable is given its concrete value and shape, so ``value_inference`` sees a constant program.

fp16 semantics: a value whose variable the program declares fp16 is rounded to fp16 after the
op that produces it, and every op computes in fp32 on the rounded values. That matches Core ML
storing activations in fp16, not the accumulation order of a particular GPU or Neural Engine.

This module uses coremltools internals (its MIL classes and loader); the ``coreml`` extra pins
the coremltools versions it is tested with. It never imports torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from coremltools.converters.mil.mil import types  # module level: _assign runs for every op output
from numpy.lib.stride_tricks import sliding_window_view

from edgeexport.errors import ArtifactError, MissingBackendError

WEIGHTS_DIR = "Data/com.apple.CoreML/weights"
FUNCTION = "main"


class _Value:
    """Stands in for coremltools' typed value holder: ``Var.val`` reads ``Var._sym_val.val``."""

    __slots__ = ("val",)

    def __init__(self, val: Any) -> None:
        self.val = val


class MilInterpreter:
    """Runs the ``main`` function of a saved ML Program with numpy.

    Args:
        package: The ``.mlpackage`` folder.

    Raises:
        ArtifactError: the package is not an ML Program.
        MissingBackendError: the program uses ops this interpreter does not implement (named).
    """

    def __init__(self, package: Path) -> None:
        self.function = load_function(package)
        unknown = sorted({op.op_type for op in _walk(self.function.operations)} - supported_ops())
        if unknown:
            raise MissingBackendError(f"the MIL reference interpreter does not implement op(s) {', '.join(unknown)} "
                                      "used by this program; run the artifact with Core ML on macOS")
        for op in self.function.operations:
            if op.op_type == "const":
                _prepare_const(op.outputs[0])
        self.operations = self._fold_constexpr([op for op in self.function.operations if op.op_type != "const"])

    @property
    def input_dtypes(self) -> dict[str, np.dtype]:
        """The numpy dtype the program declares for each input (Core ML has no int64: ids are int32)."""
        return {name: np.dtype(_numpy_dtype(var)) for name, var in self.function.inputs.items()}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the program on named inputs; returns its outputs by name in the declared dtypes."""
        for name, var in self.function.inputs.items():
            _assign(var, feed[name])
        with np.errstate(all="ignore"):  # IEEE semantics, as on device: log(0) = -inf is no error
            for op in self.operations:
                _run(op)
        outputs = {var.name: np.asarray(var.val).astype(_numpy_dtype(var)) for var in self.function.outputs}
        for op in self.operations:  # keep no activations alive between calls
            for var in op.outputs:
                var._sym_val = None
        return outputs

    @staticmethod
    def _fold_constexpr(operations: list[Any]) -> list[Any]:
        """Materialise compressed weights (``constexpr_*`` ops) once; return the ops left to run."""
        remaining = []
        for op in operations:
            if op.op_type.startswith("constexpr_"):
                _run(op)
            else:
                remaining.append(op)
        return remaining


def load_function(package: Path) -> Any:
    """The ``main`` function of a freshly loaded copy of the package's MIL program."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models.utils import load_spec

    spec = load_spec(str(package))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ArtifactError(f"{package.name} is not an ML Program (it holds a {spec.WhichOneof('Type')}); "
                            "re-run convert with --target coreml")
    program = milproto.load(spec, spec.specificationVersion, file_weights_dir=str(package / WEIGHTS_DIR))
    return program.functions[FUNCTION]


def _prepare_const(var: Any) -> None:
    """Hold fp16 weights as fp32 (once, here) and bool flags as Python bools.

    The loader gives flags such as ``keep_dims`` as ``numpy.bool``, which numpy 2.4's reductions
    reject as ``keepdims``; the converter's own program holds Python bools there.
    """
    value = var.val
    if isinstance(value, np.ndarray):
        _assign(var, value)
    elif isinstance(value, np.bool_):
        var._sym_val = _Value(bool(value))


def _walk(operations: list[Any]) -> Iterator[Any]:
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


@functools.cache
def supported_ops() -> frozenset[str]:
    """Op types this interpreter runs: coremltools' foldable ops, compressed weights and :data:`NUMPY_OPS`."""
    from coremltools.converters.mil.mil.operation import Operation
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    def foldable(cls: type) -> bool:
        return cls.value_inference is not Operation.value_inference or hasattr(cls, "materialized_val_inference")

    folded = {name for name, versions in SSAOpRegistry.core_ops.items()
              if any(cls is not None and foldable(cls) for cls in versions.values())}
    return frozenset((folded | set(NUMPY_OPS)) - CONTROL_FLOW)


def execute(op: Any) -> Any:
    """The output value(s) of one op whose inputs hold concrete values."""
    handler = NUMPY_OPS.get(op.op_type)
    if handler is not None:
        return handler(op)
    if op.op_type.startswith("constexpr_"):
        return op.materialized_val_inference()
    return op.value_inference()


def _run(op: Any) -> None:
    """Execute one op and give its output variables their values."""
    results = execute(op)
    for var, value in zip(op.outputs, results if len(op.outputs) > 1 else (results,)):
        _assign(var, value)


def _numpy_dtype(var: Any) -> type:
    return types.nptype_from_builtin(var.dtype)


def _assign(var: Any, value: Any) -> None:
    """Give ``var`` a concrete value (rounded to fp16 and held as fp32 where declared fp16) and shape."""
    dtype = _numpy_dtype(var)
    array = np.asarray(value)
    if dtype == np.float16:
        array = array.astype(np.float16).astype(np.float32)
    elif array.dtype != dtype:
        array = array.astype(dtype)
    if types.is_tensor(var.sym_type):
        var._sym_type = _tensor_type(var.dtype, array.shape)
        var._sym_val = _Value(array)
    else:
        var._sym_val = _Value(array.reshape(()) if array.size == 1 else array)


@functools.lru_cache(maxsize=4096)
def _tensor_type(builtin: type, shape: tuple[int, ...]) -> type:
    return types.tensor(builtin, shape)


# --------------------------------------------------------------------------- numpy ops


def _optional(op: Any, name: str, default: Any) -> Any:
    var = getattr(op, name, None)
    return default if var is None or var.val is None else var.val


def _padding(op: Any, sizes: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
             ceil_mode: bool = False) -> list[tuple[int, int]]:
    """(begin, end) padding of each spatial dim under MIL's ``pad_type`` (``valid|same|same_lower|custom``)."""
    pad_type = _optional(op, "pad_type", "valid")
    if pad_type == "custom":
        pad = [int(p) for p in op.pad.val]
        pads = list(zip(pad[::2], pad[1::2]))
    elif pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s in zip(sizes, kernel, strides):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((small, large) if pad_type == "same" else (large, small))
    else:
        pads = [(0, 0)] * len(sizes)
    if ceil_mode:  # grow the end padding so that a last, partial window is kept
        pads = [(b, e + (-(size + b + e - k) % s)) for (b, e), size, k, s in zip(pads, sizes, kernel, strides)]
    return pads


def _windows(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
             pads: list[tuple[int, int]], pad_value: float) -> np.ndarray:
    """Sliding windows over the spatial dims of a padded (N, C, *spatial) array: (N, C, *out, *kernel)."""
    spatial = len(kernel)
    x = np.pad(x, [(0, 0)] * (x.ndim - spatial) + pads, constant_values=pad_value)
    extents = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    windows = sliding_window_view(x, extents, axis=tuple(range(x.ndim - spatial, x.ndim)))
    index = (Ellipsis, *(slice(None, None, s) for s in strides), *(slice(None, None, d) for d in dilations))
    return windows[index]


def conv(op: Any) -> np.ndarray:
    """MIL ``conv``: grouped, strided, dilated N-d convolution of (N, C_in, *spatial) with (C_out, C_in/g, *k)."""
    x, weight = op.x.val, op.weight.val
    spatial = weight.ndim - 2
    kernel = weight.shape[2:]
    strides = tuple(int(s) for s in _optional(op, "strides", [1] * spatial))
    dilations = tuple(int(d) for d in _optional(op, "dilations", [1] * spatial))
    groups = int(_optional(op, "groups", 1))
    extents = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilations))
    pads = _padding(op, x.shape[2:], extents, strides)
    windows = _windows(x, kernel, strides, dilations, pads, 0.0)
    batch, channels, out = windows.shape[0], windows.shape[1], windows.shape[2:2 + spatial]
    grouped = windows.reshape(batch, groups, channels // groups, *out, *kernel)
    filters = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    letters = "hijklm"[:spatial]
    kernel_letters = "pqrstu"[:spatial]
    result = np.einsum(f"ngc{letters}{kernel_letters},goc{kernel_letters}->ngo{letters}", grouped, filters,
                       optimize=True).reshape(batch, weight.shape[0], *out)
    bias = _optional(op, "bias", None)
    return result if bias is None else result + bias.reshape(-1, *[1] * spatial)


def _pool(op: Any, x: np.ndarray, reduce: Callable[[np.ndarray, tuple[int, ...]], np.ndarray],
          pad_value: float) -> np.ndarray:
    """Reduce each pooling window of ``x`` under ``op``'s kernel, strides, padding and ceil mode."""
    kernel = tuple(int(k) for k in op.kernel_sizes.val)
    spatial = len(kernel)
    strides = tuple(int(s) for s in _optional(op, "strides", [1] * spatial))
    sizes = x.shape[-spatial:]
    ceil_mode = bool(_optional(op, "ceil_mode", False))
    pads = _padding(op, sizes, kernel, strides, ceil_mode=ceil_mode)
    windows = _windows(x, kernel, strides, (1,) * spatial, pads, pad_value)
    if ceil_mode:  # as in PyTorch, a last window must start inside the input or its begin padding
        starts = tuple(slice(0, -(-(size + begin) // s)) for size, (begin, _), s in zip(sizes, pads, strides))
        windows = windows[(Ellipsis, *starts, *(slice(None),) * spatial)]
    return reduce(windows, tuple(range(windows.ndim - spatial, windows.ndim)))


def max_pool(op: Any) -> np.ndarray:
    """MIL ``max_pool``: padding never wins the max."""
    return _pool(op, op.x.val, np.max, -np.inf)


def avg_pool(op: Any) -> np.ndarray:
    """MIL ``avg_pool``: padding counts as zeros unless ``exclude_padding_from_average``."""
    x = op.x.val
    total = _pool(op, x, np.sum, 0.0)
    if not _optional(op, "exclude_padding_from_average", False):
        return total / np.prod(op.kernel_sizes.val)
    kernel_rank = len(op.kernel_sizes.val)
    return total / _pool(op, np.ones(x.shape[-kernel_rank:], dtype=np.float32), np.sum, 0.0)


def gather_nd(op: Any) -> np.ndarray:
    """MIL ``gather_nd``: ``x[indices[..., 0], ..., indices[..., K-1]]`` after ``batch_dims`` shared leading dims."""
    x, indices = op.x.val, op.indices.val.astype(np.int64)
    batch_dims = int(_optional(op, "batch_dims", 0))
    positions = indices.ndim - 1
    batch = tuple(np.arange(x.shape[i]).reshape([-1 if j == i else 1 for j in range(positions)])
                  for i in range(batch_dims))
    return x[(*batch, *np.moveaxis(indices, -1, 0))]


def _resize_axis(x: np.ndarray, axis: int, size: int, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at fractional source positions ``grid``."""
    grid = np.clip(grid, 0, size - 1)
    low = np.floor(grid).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    fraction = (grid - low).reshape(shape).astype(np.float32)
    return np.take(x, low, axis=axis) * (1 - fraction) + np.take(x, high, axis=axis) * fraction


def upsample_bilinear(op: Any) -> np.ndarray:
    """MIL ``upsample_bilinear`` over the last two dims; see the grid formulas in coremltools' op docs."""
    x = op.x.val
    align_corners = bool(_optional(op, "align_corners", True))
    half_pixel = bool(_optional(op, "half_pixel_centers", not align_corners))
    for axis, scale in ((-2, _optional(op, "scale_factor_height", 1)), (-1, _optional(op, "scale_factor_width", 1))):
        size = x.shape[axis]
        out = int(np.floor(size * float(scale)))
        positions = np.arange(out, dtype=np.float64)
        if align_corners:
            grid = positions * ((size - 1) / (out - 1) if out > 1 else 0.0)
        else:
            spacing = size / out
            grid = positions * spacing + (0.5 * spacing - 0.5 if half_pixel else 0.0)
        x = _resize_axis(x, x.ndim + axis, size, grid)
    return x


def upsample_nearest_neighbor(op: Any) -> np.ndarray:
    """MIL ``upsample_nearest_neighbor``: output index ``i`` reads input ``floor(i * in / out)``."""
    x = op.x.val
    for axis, scale in ((-2, _optional(op, "scale_factor_height", 1)), (-1, _optional(op, "scale_factor_width", 1))):
        size = x.shape[axis]
        out = int(np.floor(size * float(scale)))
        x = np.take(x, np.arange(out) * size // out, axis=axis)
    return x


def _source_positions(coordinates: np.ndarray, size: int, mode: str, align_corners: bool) -> np.ndarray:
    """Pixel positions (0 = the first pixel's centre) of MIL ``resample`` coordinates along an axis of ``size``."""
    if mode == "normalized_minus_one_to_one":
        return (coordinates + 1) / 2 * (size - 1) if align_corners else ((coordinates + 1) * size - 1) / 2
    if mode == "normalized_zero_to_one":
        return coordinates * (size - 1) if align_corners else coordinates * size - 0.5
    return coordinates  # unnormalized


def _padded_index(index: np.ndarray, size: int, padding: str) -> tuple[np.ndarray, np.ndarray]:
    """In-image indices standing for ``index`` under MIL's padding modes, and where they are inside the image
    (``constant`` padding reads the padding value outside it)."""
    inside = (index >= 0) & (index < size)
    if padding == "border" or size == 1:
        mapped = np.clip(index, 0, size - 1)
    elif padding == "reflection":  # |1 2 3| -> 3 2 |1 2 3| 2 1: the edge is not repeated
        folded = np.mod(index, 2 * (size - 1))
        mapped = np.where(folded < size, folded, 2 * (size - 1) - folded)
    elif padding == "symmetric":  # |1 2 3| -> 2 1 |1 2 3| 3 2: the edge is repeated
        folded = np.mod(index, 2 * size)
        mapped = np.where(folded < size, folded, 2 * size - 1 - folded)
    else:  # constant
        mapped = np.clip(index, 0, size - 1)
    return mapped, inside if padding == "constant" else np.ones_like(inside)


def resample(op: Any) -> np.ndarray:
    """MIL ``resample`` (PyTorch's ``grid_sample``): sample (B, C, H, W) at (B, H2, W2, 2) ``(x, y)`` coordinates,
    bilinear or nearest, over the image padded as ``padding_mode`` says; returns (B, C, H2, W2)."""
    x, coordinates = op.x.val, op.coordinates.val.astype(np.float64)
    height, width = x.shape[2:]
    mode, align_corners = str(op.coordinates_mode.val), bool(op.align_corners.val)
    padding, padding_value = str(op.padding_mode.val), float(op.padding_value.val)
    columns = _source_positions(coordinates[..., 0], width, mode, align_corners)
    rows = _source_positions(coordinates[..., 1], height, mode, align_corners)
    batch = np.arange(x.shape[0]).reshape(-1, 1, 1)

    def read(row: np.ndarray, column: np.ndarray) -> np.ndarray:  # (B, H2, W2) indices -> (B, C, H2, W2)
        (r, row_inside), (c, column_inside) = _padded_index(row, height, padding), _padded_index(column, width, padding)
        values = np.moveaxis(x[batch, :, r, c], -1, 1)
        return np.where((row_inside & column_inside)[:, None], values, np.float32(padding_value))

    if str(op.sampling_mode.val) == "nearest":  # PyTorch rounds half to even, as np.rint does
        return read(np.rint(rows).astype(np.int64), np.rint(columns).astype(np.int64))
    top, left = np.floor(rows).astype(np.int64), np.floor(columns).astype(np.int64)
    down, right = (rows - top)[:, None].astype(np.float32), (columns - left)[:, None].astype(np.float32)
    return ((read(top, left) * (1 - right) + read(top, left + 1) * right) * (1 - down)
            + (read(top + 1, left) * (1 - right) + read(top + 1, left + 1) * right) * down)


NUMPY_OPS: dict[str, Callable[[Any], Any]] = {
    "conv": conv,
    "max_pool": max_pool,
    "avg_pool": avg_pool,
    "gather_nd": gather_nd,
    "upsample_bilinear": upsample_bilinear,
    "upsample_nearest_neighbor": upsample_nearest_neighbor,
    "resample": resample,
}

# Control flow: coremltools folds these only when the branch or list is known at compile time.
CONTROL_FLOW = frozenset({"cond", "list_length"})
