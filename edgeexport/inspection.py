"""What ``edgeexport list`` and ``edgeexport inspect`` show, as data: the catalog of models and
targets (and whether this machine converts and runs each), an artifact's manifest summary, its
model's op histogram and size, and a target's preflight of its graph. Needs no torch, except
a preflight that locates PyTorch modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeexport.bundle import Bundle, component_folders
from edgeexport.errors import UsageError
from edgeexport.exporter import get_exporter, preflight_targets, targets
from edgeexport.generation_spec import GenerationSpec
from edgeexport.manifest import Manifest
from edgeexport.processing import Processing
from edgeexport.runner import open_artifact, runtime_module
from edgeexport.tasks import supported_tasks
from edgeexport.zoo import PRESETS, PUBLISHED, SPECS, weights_note


@dataclass(frozen=True)
class ModelEntry:
    """A zoo model: its tasks (default first), presets and the published checkpoint (hub id) it mirrors."""

    name: str
    tasks: list[str]
    presets: tuple[str, ...]
    checkpoint: str


@dataclass(frozen=True)
class TargetEntry:
    """A target: its runtime and precisions, and whether this machine converts to it and runs it.

    ``install`` is the command that makes it convert here ('' when it does); ``runs_here`` says
    how (or how not) its artifacts run here.
    """

    target: str
    runtime: str
    precisions: list[str]
    install: str
    runs_here: str

    @property
    def converts_here(self) -> bool:
        return not self.install


def models() -> list[ModelEntry]:
    """The zoo's models in their declared order."""
    return [ModelEntry(name, supported_tasks(spec.tasks), PRESETS, PUBLISHED[name]) for name, spec in SPECS.items()]


def target_entries() -> list[TargetEntry]:
    """Every known target (built in or from an installed package), sorted by name."""
    entries = []
    for target in targets():
        exporter = get_exporter(target)
        entries.append(TargetEntry(target, exporter.runtime, list(exporter.precisions),
                                   exporter.install if exporter.missing_packages() else "",
                                   runtime_module(exporter.runtime).RUNNER.runs_here()))
    return entries


@dataclass
class Component:
    """One artifact (a bundle has one per role): its manifest, its model's details and size, and the
    preflight report when one was asked for."""

    manifest: Manifest
    details: dict[str, Any]
    size_bytes: int
    preflight: Any = None

    def summary(self) -> list[tuple[str, str]]:
        """``(field, value)`` rows describing the artifact, for a table."""
        manifest, details = self.manifest, self.details
        model = manifest.model
        rows = [
            ("model", f"{model.get('name')} ({', '.join(filter(None, (model.get('task'), weights_note(model))))})"),
            ("source", str(model.get("source"))), ("target", f"{manifest.target} via {manifest.runtime}"),
            ("precision", manifest.precision),
            ("exporter", ", ".join(f"{k}={v}" for k, v in manifest.exporter.items() if v not in (None, [], ""))),
            ("inputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.inputs)),
            ("outputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.outputs)),
            *([("fixed shape", str(model["fixed_shape"]))] if model.get("fixed_shape") else []),
            ("tolerance", ", ".join(f"{k}={v:g}" for k, v in manifest.tolerance.to_dict().items() if k != "per_output")),
            ("golden cases", ", ".join(g.name for g in manifest.golden)),
        ]
        if manifest.generation:
            rows.append(("generation", GenerationSpec.of(manifest).summary()))
        if manifest.processing:
            rows.append(("processing", Processing.of(manifest).summary()))
        return [*rows, ("parameters", f"{details.get('parameters', 0):,}"), ("size", f"{self.size_bytes / 1e6:.2f} MB"),
                ("created", manifest.created_at)]

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest.to_dict(), "size_bytes": self.size_bytes, **self.details,
                **({"preflight": self.preflight.to_dict()} if self.preflight is not None else {})}


@dataclass
class Inspection:
    """An inspected artifact, or each component of a bundle (``bundle`` set, components by role)."""

    path: Path
    components: dict[str, Component]
    bundle: Bundle | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The artifact's :meth:`Component.to_dict`, or the bundle and its components by role."""
        data = {role: component.to_dict() for role, component in self.components.items()}
        return data[""] if self.bundle is None else {"bundle": self.bundle.to_dict(), "components": data}

    def failures(self) -> list[str]:
        """One line per component whose preflight found errors: ``<role>: <summary>`` (empty when none did)."""
        return [f"{role or self.path}: {c.preflight.summary()}" for role, c in self.components.items()
                if c.preflight is not None and not c.preflight.passed]


def inspect(artifact: str | Path, *, preflight: str | None = None, locate: bool = False) -> Inspection:
    """Open (and hash-check) an artifact or bundle and describe each component.

    Args:
        artifact: The artifact or bundle folder.
        preflight: Also check each component's graph against what this target supports (tensorrt);
            :meth:`Inspection.failures` lists the components with errors. Defaults to none.
        locate: With ``preflight``: name each problem's PyTorch module (needs torch; re-exports).
            Defaults to False.

    Raises:
        UsageError: ``locate`` without ``preflight``, a target without a preflight, an artifact it cannot
            check, or a broken artifact.
    """
    if locate and preflight is None:
        raise UsageError("--locate names the PyTorch module of each preflight problem; add --preflight "
                         + " or --preflight ".join(preflight_targets()))
    folders = component_folders(artifact)
    components = {role: _component(folder) for role, folder in folders.items()}
    if preflight is not None:
        exporter = get_exporter(preflight)
        for role, folder in folders.items():
            components[role].preflight = exporter.preflight(open_artifact(folder), locate=locate)
    return Inspection(Path(artifact), components, None if "" in folders else Bundle.open(artifact))


def preflight_artifact(folder: str | Path, *, target: str = "tensorrt", locate: bool = False) -> Any:
    """The preflight report of one artifact's graph for ``target`` (:meth:`Exporter.preflight`)."""
    return get_exporter(target).preflight(open_artifact(folder), locate=locate)


def _component(folder: Path) -> Component:
    opened = open_artifact(folder)
    module = runtime_module(opened.manifest.runtime)
    details = module.describe(opened) if hasattr(module, "describe") else {}
    return Component(opened.manifest, details, sum(opened.file(f).stat().st_size for f in opened.manifest.files))
