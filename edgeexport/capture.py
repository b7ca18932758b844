"""Capturing a reference model, shared by every exporter: strategies tried in order, trace inputs,
``torch.export``, and where a captured node came from.

A :class:`CaptureStrategy` turns the reference module into something a target converts (an
ONNX ModelProto, an ML Program, an OpenVINO model); calling it returns a :class:`Result` and
never raises. :func:`run_strategies` tries an ordered tuple of them, records the winner and the
first failure, and raises the *first* failure when all fail, since later fallback errors mostly
confuse (torch.onnx's ``_capture_strategies`` pattern). :func:`node_origin` and
:func:`traced_scope` name the PyTorch module and source line behind a captured node, for error
messages and divergence localization.

torch is imported inside the functions that use it: exporter modules import this one at their
top and must import without torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from edgeexport.errors import CaptureError, StageError
from edgeexport.logs import quiet as quiet_loggers

if TYPE_CHECKING:
    import torch

    from edgeexport.reference.model import ReferenceModel

logger = logging.getLogger(__name__)

# transformers: tracing reads every module attribute, and `loss_function` logs "loss_type=None ..." when read.
NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir", "onnxslim", "transformers")


@dataclass
class Result:
    """Outcome of one strategy: what it made and what to record about it, or the exception that stopped it."""

    strategy: str
    value: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    exception: BaseException | None = None

    @property
    def success(self) -> bool:
        return self.exception is None


class CaptureStrategy(ABC):
    """One way of turning the reference module into a target's model.

    Subclasses implement :meth:`_capture`; calling the strategy runs it inside :meth:`context`
    on :func:`trace_inputs` and records any failure in the result instead of raising.
    """

    name: ClassVar[str]

    def __call__(self, reference: ReferenceModel, opset: int | None) -> Result:
        try:
            with self.context():
                value, details = self._capture(reference, trace_inputs(reference), opset)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and the next strategy tried
            logger.debug("capture strategy %s failed", self.name, exc_info=True)
            return Result(self.name, exception=exc)
        return Result(self.name, value=value, details=details)

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """What the capture runs in. Defaults to :func:`export_context`."""
        return export_context()

    def applies(self, failures: Sequence[Result]) -> bool:
        """Whether to try this strategy after the ``failures`` of the strategies before it (default: always)."""
        return True

    @abstractmethod
    def _capture(self, reference: ReferenceModel, args: tuple[torch.Tensor, ...],
                 opset: int | None) -> tuple[Any, dict[str, Any]]:
        """The captured (or converted) model and what to record about how it was made."""


def describe_exception(exc: BaseException | None) -> str:
    """First line of the root cause of ``exc`` (torch wraps the useful message in several layers)."""
    if exc is None:
        return ""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(root)).splitlines() if line.strip()]
    summary = f"{type(root).__name__}: {lines[0].strip() if lines else ''}"
    return summary[:400] + ("..." if len(summary) > 400 else "")


def first_failure(reference: ReferenceModel, failures: Sequence[Result]) -> StageError:
    """The error to raise when every strategy failed: the first failure's own stage error, else a
    :class:`CaptureError` with its root cause; both name every strategy tried."""
    first = failures[0]
    tried = ", ".join(f.strategy for f in failures)
    if isinstance(first.exception, StageError):
        return first.exception.extended(f" (strategies tried: {tried})")
    return CaptureError("capture", f"{first.strategy}: {describe_exception(first.exception)}; strategies tried: "
                        f"{tried}. Next steps: simplify the failing module or report the op", model=reference.name)


def run_strategies(strategies: Sequence[CaptureStrategy], reference: ReferenceModel, opset: int | None, *,
                   failed: Callable[[ReferenceModel, Sequence[Result]], StageError] = first_failure,
                   describe: Callable[[BaseException | None], str] = describe_exception,
                   ) -> tuple[Any, dict[str, Any]]:
    """Try each strategy in order (those that apply after the failures so far); return the first one's
    model that succeeds and what to record:
    ``strategy`` (the winner), ``fallback_reason`` (``describe`` of the first failure, None when
    the first strategy won) and the winner's details.

    Raises:
        StageError: every strategy failed: ``failed(reference, failures)``, chained to the first failure.
    """
    failures: list[Result] = []
    for strategy in strategies:
        if not strategy.applies(failures):
            continue
        result = strategy(reference, opset)
        if result.success:
            reason = describe(failures[0].exception) if failures else None
            return result.value, {"strategy": result.strategy, "fallback_reason": reason, **result.details}
        failures.append(result)
    raise failed(reference, failures) from failures[0].exception


def trace_inputs(reference: ReferenceModel) -> tuple[torch.Tensor, ...]:
    """Example inputs to trace with: torch.export specialises dims of size 0 and 1, so every
    dynamic axis is traced at a size >= 2."""
    import torch

    sizes = {axis: max(example, 2) for axis, (example, _) in reference.sizes.items()}
    example = reference.make_inputs(sizes)
    return tuple(torch.from_numpy(example[n]) for n in reference.input_names)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch.onnx/onnxscript progress prints, warnings and log chatter; failures still raise."""
    with quiet_loggers(NOISY_LOGGERS, stdout=True):
        yield


@contextlib.contextmanager
def export_context() -> Iterator[None]:
    """Quiet export with SDPA's math kernel: T5's and Swin's float attention bias otherwise fail
    in decomposition ("Cannot view a tensor ..."); parity is unaffected."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with quiet(), sdpa_kernel([SDPBackend.MATH]):
        yield


def export_program(reference: ReferenceModel, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of the wrapper, every dynamic axis as ``Dim.DYNAMIC``, with the
    export patches the model uses (:data:`edgeexport.reference.patches.EXPORT_PATCHES`).

    The wrapper's forward is ``forward(*tensors)``: one positional argument holding a tuple.
    """
    import torch

    from edgeexport.reference.patches import EXPORT_PATCHES, applicable, patched

    axes = tuple(reference.dynamic_axes[n] or None for n in reference.input_names)
    dims = tuple({i: torch.export.Dim.DYNAMIC for i in named} if named else None for named in axes)
    with patched(applicable(reference.module, EXPORT_PATCHES)):
        return torch.export.export(reference.module, args, dynamic_shapes=(dims,) if any(axes) else None, strict=False)


@dataclass(frozen=True)
class NodeOrigin:
    """Where a captured node came from: innermost module path and class, and the source line."""

    module: str
    module_class: str
    source: str

    def describe(self) -> str:
        """``module 'path' (Class) at File "...", line N: code`` (the source part when known)."""
        return f"module '{self.module}' ({self.module_class})" + (f" at {self.source}" if self.source else "")


def node_origin(node: torch.fx.Node) -> NodeOrigin:
    """The innermost ``nn.Module`` (path relative to the reference model) and source line of an FX node."""
    stack = list((node.meta.get("nn_module_stack") or {}).values())
    path, kind = stack[-1] if stack else ("", "")
    trace = [line.strip() for line in (node.meta.get("stack_trace") or "").strip().splitlines()]
    files = [i for i, line in enumerate(trace) if line.startswith("File ")]
    # The innermost frame outside torch itself: the model code that called the op or module.
    outside = [i for i in files if f"{os.sep}torch{os.sep}" not in trace[i]] or files
    source = ""
    if outside:
        last = outside[-1]
        source = trace[last] + (f": {trace[last + 1]}" if last + 1 < len(trace) else "")
    return NodeOrigin(module=module_path(path), module_class=kind if isinstance(kind, str) else kind.__qualname__,
                      source=source)


def module_path(path: str) -> str:
    """``L['self'].block.attn`` or ``model.block.attn`` -> ``block.attn`` (top level shows as ``<root>``)."""
    cleaned = re.sub(r"^L\['self'\]\.?", "", path)
    cleaned = re.sub(r"\._modules\['([^']+)'\]", r".\1", cleaned).lstrip(".")
    return cleaned.removeprefix("module.").removeprefix("model.") or "<root>"


def traced_scope(node: torch.Node) -> str:
    """Attribute path, from the traced module, of the innermost module that ran a ``torch.jit.trace`` node
    (``__module.model.encoder`` -> ``model.encoder``; empty for the traced module itself)."""
    return node.scopeName().rpartition("/")[2].removeprefix("__module").removeprefix(".")
