"""Runtimes, one module per backend, behind one interface: ``load(artifact)(inputs) -> outputs``.

The manifest names the runtime module that runs an artifact (``manifest.runtime``), so a new
target plugs in with one module defining ``RUNNER`` (and optionally ``describe``).
``generate`` is not a backend: it holds the generation loop over these runners.
Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeexport.artifact import Artifact
from edgeexport.bundle import Bundle, is_bundle
from edgeexport.errors import ArtifactError
from edgeexport.runtimes.base import Runner

__all__ = ["Runner", "load", "open_artifact", "runtime_module", "runtimes"]


NOT_RUNTIMES = ("base", "generate", "mil_interpreter")  # modules of this package that are not backends


def runtimes() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in NOT_RUNTIMES)


def runtime_module(name: str) -> ModuleType:
    """The runtime module called ``name``; raises :class:`ArtifactError` for names this version lacks."""
    if name not in runtimes():
        raise ArtifactError(f"artifact needs runtime {name!r}, which this edgeexport does not have "
                            f"(it has {', '.join(runtimes())}); upgrade edgeexport")
    return importlib.import_module(f"{__name__}.{name}")


def open_artifact(artifact: str | Path | Artifact, *, verify: bool = True) -> Artifact:
    """Open (and by default hash-check) an artifact folder.

    Raises:
        ArtifactError: not an artifact; a bundle's message names its components.
    """
    if not isinstance(artifact, Artifact) and is_bundle(artifact):
        roles = Bundle.open(artifact).components
        raise ArtifactError(f"{str(artifact)!r} is a bundle of {', '.join(roles)}; pass one component "
                            f"(e.g. {Path(artifact) / next(iter(roles))}), or use validate, inspect or generate")
    opened = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    if verify:
        opened.verify()
    return opened


def load(artifact: str | Path | Artifact, *, verify: bool = True, verify_signature: str | Path | None = None,
         **options: Any) -> Runner:
    """Open an artifact and return its runner; the backend session is created on first call.

    Args:
        artifact: The artifact folder (or an opened :class:`Artifact`).
        verify: Check every file's sha256 first. Defaults to True.
        verify_signature: Public key (PEM) whose signature the artifact must carry
            (:func:`edgeexport.signing.verify`), checked before anything is read. Defaults to None (not checked).
        **options: Runner options (see each runner's docstring).
    """
    if verify_signature is not None:
        from edgeexport.signing import verify as verify_signed

        verify_signed(artifact.path if isinstance(artifact, Artifact) else artifact, verify_signature)
    opened = open_artifact(artifact, verify=verify)
    runner_class = runtime_module(opened.manifest.runtime).RUNNER
    runner_class.check_available()
    return runner_class(opened, **options)
