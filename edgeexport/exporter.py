"""The exporter contract, and how targets are found.

A target is two modules: an exporter (a module defining ``EXPORTER``, an :class:`Exporter`)
and the runtime that runs its artifacts (a module defining ``RUNNER``, see
:mod:`edgeexport.runner`). Built-in targets are the modules of :mod:`edgeexport.exporters`;
other packages add targets through the entry point group ``edgeexport.exporters`` (name ->
module), and runtimes through ``edgeexport.runtimes``. An exporter declares everything about
itself as class attributes: its precisions and their tolerances, the options the command line
offers for it, the packages it needs and the extra that installs them, the tool versions the
manifest records and its numbered stages. Nothing else in edgeexport names a target.

Exporters run as numbered stages (capture, convert, optimise, ...); each stage raises one
error class (:class:`~edgeexport.errors.CaptureError`, :class:`~edgeexport.errors.ConversionError`)
with the stage's name, and the conversion numbers it from :attr:`Exporter.stages`. Exporter
modules import without torch (they import it inside functions), so ``edgeexport list`` runs
on a device that has only a runtime. Exporters never import a runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeexport import packages
from edgeexport.errors import UnsupportedError, UsageError
from edgeexport.manifest import Tolerance
from edgeexport.plugins import plugin_module, plugin_names
from edgeexport.tasks import WITH_PAST

if TYPE_CHECKING:
    from edgeexport.artifact import Artifact
    from edgeexport.reference.model import ReferenceModel

__all__ = ["ExportResult", "Exporter", "Option", "get_exporter", "preflight_targets", "target_options", "targets"]

TARGETS = "edgeexport.exporters"  # the package of built-in targets and the entry point group of others
# Calibrated (static int8) precisions: samples at the example sizes (ReferenceModel.calibration_inputs), and the
# last weighted layers (the task head: classifier, pooler, LM head) kept in float: they are a sliver of the
# compute, and quantizing them costs most of the int8 error on the zoo.
CALIBRATION_SAMPLES = 24
FLOAT_HEAD_LAYERS = 2


@dataclass
class ExportResult:
    """What an exporter wrote: the main model file and how it was produced."""

    model_file: str
    exporter: dict[str, Any]
    runtime_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A keyword option of one target's :meth:`Exporter.export` (``convert --<name>``).

    Attributes:
        name: Keyword name (``deployment_target``; the flag is ``--deployment-target``).
        type: What the command line parses: ``str``, ``int``, ``float``, ``bool`` (``--<name>/--no-<name>``),
            or ``list[str]`` for a repeatable flag.
        help: The flag's help text.
        check: Called with a set value before any work; raises :class:`UsageError` for a bad one.
    """

    name: str
    type: Any
    help: str
    check: Callable[[Any], object] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Exporter(ABC):
    """Base class of the per-target exporters.

    Class attributes a subclass declares:
        target: Its name (``--target``).
        runtime: Name of the runtime that runs its artifacts.
        precisions: Precision name -> tolerance, or None to keep the reference model's own.
        default_precision: Used when the caller names none.
        options: Its keyword options (:class:`Option`), offered by ``convert`` as flags.
        requires: Import names of the packages converting needs.
        extra: The pip extra(s) of edgeexport that install them (``export,openvino``); empty for
            a target from another package.
        tool_packages: Distributions whose versions the manifest records.
        stages: Its stages in order, as the errors of each stage name them.
        calibrated_precisions: Precisions whose activation ranges are calibrated on reference inputs
            (static int8); :meth:`refuse` refuses them for decoders with a cache (``-with-past`` tasks).
    """

    target: ClassVar[str]
    runtime: ClassVar[str]
    precisions: ClassVar[dict[str, Tolerance | None]] = {"fp32": None}
    default_precision: ClassVar[str] = "fp32"
    options: ClassVar[tuple[Option, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    tool_packages: ClassVar[tuple[str, ...]] = ()
    stages: ClassVar[tuple[str, ...]] = ()
    calibrated_precisions: ClassVar[tuple[str, ...]] = ()

    @property
    def install(self) -> str:
        """The command that installs what converting needs."""
        return f"pip install 'edgeexport[{self.extra}]'" if self.extra else "pip install edgeexport"

    def missing_packages(self) -> list[str]:
        return packages.missing(self.requires)

    def check_available(self) -> None:
        """Raise :class:`MissingBackendError` naming the install command if a required package is missing."""
        packages.require(self.requires, needed_by=f"target {self.target!r}", install=self.install)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UsageError(f"target {self.target!r} does not support precision {precision!r}; "
                             f"choose one of: {', '.join(self.precisions)}")

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise :class:`UsageError` for options this target does not take, or set to a bad value
        (None values are unset)."""
        own = {option.name: option for option in self.options}
        given = {name: value for name, value in options.items() if value is not None}
        unknown = sorted(name for name in given if name not in own)
        if unknown:
            takes = f"it takes {', '.join(own)}" if own else "it takes none"
            raise UsageError(f"target {self.target!r} has no option {', '.join(unknown)}; {takes}")
        for name, value in given.items():
            if own[name].check is not None:
                own[name].check(value)

    def tolerance(self, reference: ReferenceModel, precision: str) -> Tolerance:
        """Parity tolerance of an artifact: the precision's own, else the reference model's."""
        return self.precisions[precision] or reference.tolerance

    def refuse(self, model: str, task: str, precision: str) -> None:
        """Refuse a model this target is known not to convert correctly at ``precision``, from its name and task
        alone: before torch is imported and any work is done (docs/parity.md, "Known failures"). By default, a
        calibrated precision for a decoder with a cache (a ``-with-past`` task): calibration sees first steps (an
        empty cache), and the decode steps then run outside those ranges (GPT-2 tiny on OpenVINO int8: 0.66
        spreads RMS on the decode step).

        Raises:
            UnsupportedError: the combination is known to be broken; the message says why and what to use.
        """
        if precision in self.calibrated_precisions and task in WITH_PAST:
            raise UnsupportedError(f"--precision {precision} breaks the decode steps of {model!r} (a decoder "
                                   "with a cache: activation ranges are calibrated on the first step only); use "
                                   "--precision int8-weights")

    @abstractmethod
    def export(self, reference: ReferenceModel, folder: Path, *, precision: str, **options: Any) -> ExportResult:
        """Write the target's model files into ``folder`` (an empty staging folder).

        ``options`` holds the conversion's generic options (``opset``, ``simplify_graph``) and
        this target's own :attr:`options` that were set.
        """

    def preflight(self, artifact: Artifact, *, locate: bool = False) -> Any:
        """Check an artifact's graph against what the target supports (``inspect --preflight``); a
        report with ``summary()``, ``source``, ``findings`` and ``to_dict()``.

        Raises:
            UsageError: the target has no preflight.
        """
        raise UsageError(f"preflight exists for target {', '.join(map(repr, preflight_targets())) or 'none'} only, "
                         f"not {self.target!r}")


def targets() -> list[str]:
    """Names of all targets this edgeexport knows: built in and from installed packages (installed or not)."""
    return plugin_names(TARGETS)


def preflight_targets() -> list[str]:
    """The targets whose exporter checks an artifact's graph (:meth:`Exporter.preflight`, ``inspect --preflight``);
    targets whose module cannot be imported are left out."""
    having = []
    for target in targets():
        try:
            if type(get_exporter(target)).preflight is not Exporter.preflight:
                having.append(target)
        except UsageError:
            continue
    return having


def get_exporter(target: str) -> Exporter:
    """The exporter of ``target``; unknown targets raise a :class:`UsageError` listing the known ones."""
    module = plugin_module(TARGETS, target)
    if module is None:
        raise UsageError(f"unknown target {target!r}; choose one of: {', '.join(targets())}")
    return module.EXPORTER


def target_options() -> dict[str, Option]:
    """Every target's options by name (a name two targets declare is one option), for the command line.

    Targets whose module cannot be imported are left out; converting to them says why.
    """
    found: dict[str, Option] = {}
    for target in targets():
        try:
            exporter = get_exporter(target)
        except UsageError:
            continue
        for option in exporter.options:
            found.setdefault(option.name, option)
    return found
