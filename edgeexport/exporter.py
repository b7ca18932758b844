"""The exporter contract: one subclass per target, writing model files into a staging folder.

Exporters run as numbered stages (capture, convert, optimise); each stage raises its own
error class (:class:`~edgeexport.errors.CaptureError`, :class:`~edgeexport.errors.ConversionError`)
whose message names the stage and what to try next. Exporters never import a runtime.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeexport.artifact import Tolerance
from edgeexport.errors import MissingBackendError, UsageError

if TYPE_CHECKING:
    from edgeexport.reference.model import ReferenceModel


@dataclass
class ExportResult:
    """What an exporter wrote: the main model file and how it was produced."""

    model_file: str
    exporter: dict[str, Any]
    runtime_options: dict[str, Any] = field(default_factory=dict)


class Exporter(ABC):
    """Base class of the per-target exporters.

    Subclasses declare ``target`` (CLI name), ``runtime`` (module under
    ``edgeexport.runtimes`` that runs the artifact), ``requires`` (importable packages) and
    ``precisions`` (name -> tolerance, or None to keep the reference model's own tolerance),
    ``default_precision`` (used when the caller names none)
    and ``options`` (target-specific keyword options of :meth:`export`, e.g. tensorrt's ``shapes``).
    """

    target: ClassVar[str]
    runtime: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[dict[str, Tolerance | None]] = {"fp32": None}
    default_precision: ClassVar[str] = "fp32"
    options: ClassVar[tuple[str, ...]] = ()

    def check_available(self) -> None:
        """Raise :class:`MissingBackendError` naming the pip extra if a required package is missing."""
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            raise MissingBackendError(f"target {self.target!r} needs {', '.join(missing)}; "
                                      f"install it with: pip install 'edgeexport[{self.target}]'")

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(f"target {self.target!r} does not support precision {precision!r}; "
                             f"choose one of: {', '.join(self.precisions)}")

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`UsageError` for target options this target does not take (None values are unset)."""
        unknown = sorted(name for name, value in options.items() if value is not None and name not in self.options)
        if unknown:
            takes = f"it takes {', '.join(self.options)}" if self.options else "it takes none"
            raise UsageError(f"target {self.target!r} has no option {', '.join(unknown)}; {takes}")

    def tolerance(self, reference: ReferenceModel, precision: str) -> Tolerance:
        """Parity tolerance of an artifact: the precision's own, else the reference model's."""
        return self.precisions[precision] or reference.tolerance

    @abstractmethod
    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, **options: Any) -> ExportResult:
        """Write the target's model files into ``folder`` (an empty staging folder)."""
