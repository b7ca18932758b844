"""Which ops keep fp32 compute in an fp16 model: the thresholds and the ops that feed them, and regression heads.

A float comparison (``x < 0.5``) is a step: a value within fp16 rounding of the threshold lands on
the other side in fp16, and what the comparison gates (Mask2Former's masked attention: which pixels
a query may attend to) changes outright. fp16 keeps about 3 decimal digits, so near 0.5 it cannot
tell ``sigmoid(-1e-4)`` from 0.5: Mask2Former's mask threshold flipped on 2 of 160 attention-mask
entries at one of its four parity cases, and its logits moved by 0.5 spreads (docs/parity.md).

:func:`threshold_feeders` finds, in any graph, each comparison of float values and every op on its
float inputs' paths back to the nearest contraction (a matrix product or a convolution, which stays
fp16: measured, keeping it in fp32 too changed nothing, and onnxruntime could then not load the
fused Mask2Former). The ONNX and Core ML exporters keep those ops in fp32 and convert the rest. In
Mask2Former that is one chain per decoder layer (bilinear resize of the mask logits, sigmoid,
reshapes, the comparison): 6 of 528 fused ONNX nodes at the tiny preset.

:func:`head_ops` finds the ops computing a regression output (:data:`edgeexport.tasks.TaskHead.fp32_heads`:
GLPN's depth in metres) back to and including the nearest contraction: the user reads its numbers, and
fp16 rounds them to 1e-3 of their value, more than a depth map may vary over a photograph. The random
GLPN's depth is 4.98 m everywhere within 0.0026 m (mean |depth - mean|): its depth error was 0.84 of
that spread under fp16 (Core ML and onnxruntime alike) and 0.004 with its last convolution, sigmoid and
scaling in fp32 and the output delivered in fp32 (Core ML declares an fp16 output under fp16 compute,
and onnxruntime's converter rounds an fp32 node's output through fp16 before the graph output);
docs/parity.md, "Task agreement of depth maps".
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

Op = TypeVar("Op")

# ONNX op types and Core ML MIL op types.
COMPARISONS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual",
                         "less", "less_equal", "greater", "greater_equal"})
CONTRACTIONS = frozenset({"MatMul", "Gemm", "Einsum", "Conv", "ConvTranspose", "FusedMatMul",
                          "matmul", "linear", "einsum", "conv", "conv_transpose"})


def threshold_feeders(ops: Iterable[Op], *, op_type: Callable[[Op], str],
                      float_parents: Callable[[Op], Iterable[Op]]) -> list[Op]:
    """The float comparisons among ``ops`` and the ops feeding them, back to the nearest contractions.

    Args:
        ops: Every op of a graph.
        op_type: An op's type (ONNX ``op_type`` or MIL ``op_type``).
        float_parents: The ops producing an op's float inputs (not shapes or indices, and nothing
            for a graph input or a constant).

    Returns:
        The comparisons and their feeders, up to (without) the contractions.
    """
    kept: dict[int, Op] = {}
    stack = [op for op in ops if op_type(op) in COMPARISONS]
    while stack:
        op = stack.pop()
        if id(op) not in kept and op_type(op) not in CONTRACTIONS:
            kept[id(op)] = op
            stack.extend(float_parents(op))
    return list(kept.values())


def head_ops(producers: Iterable[Op], *, op_type: Callable[[Op], str],
             float_parents: Callable[[Op], Iterable[Op]]) -> list[Op]:
    """The ops computing some outputs, back to and including the nearest contraction on each path.

    Args:
        producers: The ops producing the outputs.
        op_type: An op's type (ONNX ``op_type`` or MIL ``op_type``).
        float_parents: The ops producing an op's float inputs.

    Returns:
        The producers and the ops feeding them, down to the contractions (included).
    """
    kept: dict[int, Op] = {}
    stack = list(producers)
    while stack:
        op = stack.pop()
        if id(op) not in kept:
            kept[id(op)] = op
            if op_type(op) not in CONTRACTIONS:
                stack.extend(float_parents(op))
    return list(kept.values())
