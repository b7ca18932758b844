"""Exporters, one module per target. A target is found by its module name: adding
``exporters/<target>.py`` defining ``EXPORTER`` (and the runtime it names) is all it takes."""

from __future__ import annotations

import importlib
import pkgutil

from edgeexport.errors import UsageError
from edgeexport.exporters.base import Exporter, ExportResult

__all__ = ["ExportResult", "Exporter", "get_exporter", "targets"]


NOT_TARGETS = ("base", "coreml_fixes")  # modules of this package that are not targets


def targets() -> list[str]:
    """Names of all targets this edgeexport knows (installed or not)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_TARGETS)


def get_exporter(target: str) -> Exporter:
    """The exporter of ``target``; unknown targets raise a :class:`UsageError` listing the known ones."""
    if target not in targets():
        raise UsageError(f"unknown target {target!r}; choose one of: {', '.join(targets())}")
    return importlib.import_module(f"{__name__}.{target}").EXPORTER
