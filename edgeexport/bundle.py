"""Bundles: one folder holding the artifacts of a model that runs as several graphs.

An encoder-decoder generation model (``seq2seq-lm-with-past``) is a bundle::

    bundle.json    the components by role, and the sha256 of each component's manifest.json
    encoder/       a complete artifact (manifest.json, model file, golden cases)
    decoder/       a complete artifact

Every component is a normal artifact, so ``edgeexport validate``, ``inspect`` and ``bench``
work on ``BUNDLE/decoder`` alone; ``validate``, ``inspect`` and ``generate`` also take the
bundle folder. A bundle is written into one staging folder and renamed into place
(:func:`edgeexport.artifact.staged_output`), and ``bundle.json`` pins each component's
manifest (which pins every file), so components of two conversions never mix. This module
imports neither torch nor any runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeexport.artifact import MANIFEST_NAME, Artifact, read_json, resolve_inside, sha256_file
from edgeexport.errors import ArtifactError

BUNDLE_NAME = "bundle.json"
BUNDLE_SCHEMA_VERSION = 1


@dataclass
class Bundle:
    """A bundle folder opened for reading. ``open`` parses ``bundle.json``; ``verify`` checks the manifests' hashes."""

    path: Path
    model: dict[str, Any]
    components: dict[str, str]
    manifests: dict[str, str]

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Parse and check ``bundle.json``; raise :class:`ArtifactError` naming the problem."""
        root = Path(path)
        file = root / BUNDLE_NAME
        if not file.is_file():
            raise ArtifactError(f"{str(root)!r} has no {BUNDLE_NAME}; it is not an edgeexport bundle")
        bundle = cls(path=root, **_parse(read_json(file, kind="bundle")))
        for role in bundle.components:
            bundle.folder(role)
        return bundle

    def folder(self, role: str) -> Path:
        """Folder of the component ``role``, checked to stay inside the bundle."""
        if role not in self.components:
            raise ArtifactError(f"the bundle has no component {role!r}; it has {', '.join(self.components)}")
        return resolve_inside(self.path, self.components[role])

    def verify(self) -> None:
        """Check that each component's manifest matches the sha256 recorded in ``bundle.json``."""
        for role in self.components:
            manifest = self.folder(role) / MANIFEST_NAME
            if not manifest.is_file():
                raise ArtifactError(f"bundle component {role!r} has no {MANIFEST_NAME}; the bundle is incomplete, "
                                    "re-run convert")
            if sha256_file(manifest) != self.manifests.get(role):
                raise ArtifactError(f"the manifest of bundle component {role!r} does not match its sha256 in "
                                    f"{BUNDLE_NAME}; it was modified or comes from another conversion")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": BUNDLE_SCHEMA_VERSION, "model": self.model, "components": self.components,
                "manifests": self.manifests}


def _parse(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ArtifactError(f"{BUNDLE_NAME} must hold a JSON object")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= BUNDLE_SCHEMA_VERSION:
        raise ArtifactError(f"{BUNDLE_NAME} schema_version {version!r} is not one this edgeexport understands "
                            f"(1..{BUNDLE_SCHEMA_VERSION}); upgrade edgeexport")
    fields = {key: data.get(key) for key in ("model", "components", "manifests")}
    for key, value in fields.items():
        if not isinstance(value, dict):
            raise ArtifactError(f"{BUNDLE_NAME} field {key!r} must be an object")
    if not fields["components"] or not all(isinstance(v, str) for v in fields["components"].values()):
        raise ArtifactError(f"{BUNDLE_NAME} components must map roles to folder names")
    return fields


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is a bundle folder (holds ``bundle.json``)."""
    return (Path(path) / BUNDLE_NAME).is_file()


def write_bundle(folder: Path, roles: Sequence[str], model: dict[str, Any]) -> Bundle:
    """Write ``bundle.json`` for components already written to ``folder/<role>``, each with its manifest."""
    bundle = Bundle(path=folder, model=model, components={role: role for role in roles},
                    manifests={role: sha256_file(folder / role / MANIFEST_NAME) for role in roles})
    (folder / BUNDLE_NAME).write_text(json.dumps(bundle.to_dict(), indent=2) + "\n")
    return bundle


def component_folders(path: str | Path) -> dict[str, Path]:
    """``{role: folder}`` of a bundle (its manifests verified), or ``{"": path}`` for a single artifact."""
    if not is_bundle(path):
        return {"": Path(path)}
    bundle = Bundle.open(path)
    bundle.verify()
    return {role: bundle.folder(role) for role in bundle.components}


def open_components(path: str | Path) -> dict[str, Artifact]:
    """``{role: artifact}`` of a bundle (its manifests verified), or ``{"": artifact}`` for a single artifact:
    each opened and every file hash-checked, once, so the callers pass the opened artifacts on.

    Raises:
        ArtifactError: not an artifact or bundle, or a file that does not match its manifest.
    """
    opened = {role: Artifact.open(folder) for role, folder in component_folders(path).items()}
    for artifact in opened.values():
        artifact.verify()
    return opened
