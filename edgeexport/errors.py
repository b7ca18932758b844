"""Error classes: one per stage, each message a single line that names the problem and the fix.

Everything edgeexport raises on purpose derives from :class:`EdgeExportError`. The CLI prints
``error: <message>`` for these and exits with :attr:`EdgeExportError.exit_code`; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EdgeExportError(Exception):
    """Base class of every error edgeexport raises deliberately."""

    exit_code: int = 2


class UsageError(EdgeExportError):
    """The user asked for something that does not exist or cannot work (exit code 2)."""


class UnsupportedError(UsageError):
    """A model, target and precision known not to work together, refused before the export (the
    support matrix shows these as ``refused``, with the reason)."""


class ModelLoadError(UsageError):
    """A model could not be found, fetched or built from its source."""


class MissingBackendError(UsageError):
    """An optional backend package is not installed."""


class OutputDirError(UsageError):
    """The output folder cannot be used (not empty, a file, not writable)."""


class InputSpecError(UsageError):
    """Example or runtime inputs do not match what the model expects."""


class ArtifactError(UsageError):
    """An artifact folder is missing files, corrupt or of an unknown schema."""


class DeviceError(UsageError):
    """The GPU cannot do what was asked: none visible, out of memory, or a failing CUDA call."""


class TuningError(EdgeExportError):
    """No candidate precision passed parity in ``convert --precision auto`` (exit code 1, as a parity failure)."""

    exit_code = 1


class StageError(EdgeExportError):
    """A stage of a conversion failed (exit code 2).

    Raised with the stage's name (one of the exporter's ``stages``), what went wrong and what to
    try next, and optionally the model's name and a label shown instead of the stage's name (the
    strategy or tool that ran it). The conversion that ran the exporter numbers it with
    :meth:`numbered`: ``stage 2/4 (translate to ONNX) failed for bert: ...``; unnumbered it reads
    ``translate to ONNX failed for bert: ...``.
    """

    def __init__(self, stage: str, detail: str, *, model: str = "", label: str = "",
                 position: tuple[int, int] | None = None) -> None:
        super().__init__(stage, detail)
        self.stage = stage
        self.detail = detail
        self.model = model
        self.label = label
        self.position = position

    def __str__(self) -> str:
        name = self.label or self.stage
        where = f"stage {self.position[0]}/{self.position[1]} ({name})" if self.position else name
        return f"{where} failed{f' for {self.model}' if self.model else ''}: {self.detail}"

    def __reduce__(self) -> tuple[Any, ...]:  # keyword fields survive pickling (matrix worker processes)
        return type(self), (self.stage, self.detail), self.__dict__

    def _copy(self, **changes: Any) -> StageError:
        fields = {"model": self.model, "label": self.label, "position": self.position, **changes}
        detail = fields.pop("detail", self.detail)
        return type(self)(self.stage, detail, **fields).with_traceback(self.__traceback__)

    def numbered(self, stages: Sequence[str]) -> StageError:
        """This error with its stage's position in ``stages`` (unchanged when the stage is not there)."""
        if self.stage not in stages:
            return self
        return self._copy(position=(list(stages).index(self.stage) + 1, len(stages)))

    def extended(self, more: str) -> StageError:
        """This error with ``more`` appended to its message."""
        return self._copy(detail=self.detail + more)


class CaptureError(StageError):
    """PyTorch could not capture the model into a graph."""


class ConversionError(StageError):
    """A captured graph could not be translated, checked, converted or built for the target."""
