"""Whether the packages something needs are installed: the one check that exporters, runners,
``edgeexport list`` and the commands that need torch share.

Packages are named by import name (``openvino``, ``coremltools``) and looked up without
importing them, so asking costs nothing and works where a package is blocked.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from edgeexport.errors import MissingBackendError

EXPORT_INSTALL = "pip install 'edgeexport[export]'"
TORCH = ("torch", "transformers")  # what the PyTorch side (references, capture, --reference) imports


def missing(import_names: Iterable[str]) -> list[str]:
    """The names of ``import_names`` that are not installed, in order."""
    return [name for name in import_names if importlib.util.find_spec(name) is None]


def require(import_names: Iterable[str], *, needed_by: str, install: str) -> None:
    """Raise :class:`MissingBackendError` when any of ``import_names`` is missing.

    Args:
        import_names: Import names of the packages.
        needed_by: Who needs them, the start of the message (``target 'openvino'``, ``--reference``).
        install: The command that installs them.
    """
    absent = missing(import_names)
    if absent:
        raise MissingBackendError(f"{needed_by} needs {', '.join(absent)}; install it with: {install}")


def require_torch(needed_by: str) -> None:
    """Raise :class:`MissingBackendError` naming ``pip install 'edgeexport[export]'`` when torch or
    transformers is missing; call it before importing anything that imports them."""
    require(TORCH, needed_by=needed_by, install=EXPORT_INSTALL)
