"""Modules found by name: edgeexport's own, or ones installed packages register as entry points.

Targets (:mod:`edgeexport.exporter`) and runtimes (:mod:`edgeexport.runner`) are looked up the
same way: a module of the built-in package (``edgeexport.exporters.onnx``), else the module
named by the entry point of the same name in the group named like the package. A package adds
a target with, in its metadata::

    [project.entry-points."edgeexport.exporters"]
    toy = "toy_target.exporter"      # a module defining EXPORTER

    [project.entry-points."edgeexport.runtimes"]
    toy = "toy_target.runtime"       # a module defining RUNNER
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import pkgutil
from types import ModuleType

from edgeexport.errors import UsageError


@functools.cache
def _plugins(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=group)}


def plugin_module(package: str, name: str) -> ModuleType | None:
    """The module called ``name``: ``<package>.<name>`` if edgeexport has it, else the one an
    installed package registers under the entry point group ``package``; None when neither exists.

    Raises:
        UsageError: a registered module that fails to import.
    """
    if name in _builtin_names(package):
        return importlib.import_module(f"{package}.{name}")
    entry = _plugins(package).get(name)
    if entry is None:
        return None
    try:
        return entry.load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin gets one line, not a traceback
        raise UsageError(f"{name!r} from {entry.value} ({package}) cannot be imported: {type(exc).__name__}: {exc}; "
                         "reinstall or remove the package that provides it") from exc


def plugin_names(package: str) -> list[str]:
    """The module names of ``package`` and the entry point names of its group, sorted."""
    return sorted({*_builtin_names(package), *_plugins(package)})


def _builtin_names(package: str) -> list[str]:
    return [module.name for module in pkgutil.iter_modules(importlib.import_module(package).__path__)]
