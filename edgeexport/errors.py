"""Error classes: one per stage, each message a single line that names the problem and the fix.

Everything edgeexport raises on purpose derives from :class:`EdgeExportError`. The CLI prints
``error: <message>`` for these and exits with :attr:`EdgeExportError.exit_code`; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeExportError(Exception):
    """Base class of every error edgeexport raises deliberately."""

    exit_code: int = 2


class UsageError(EdgeExportError):
    """The user asked for something that does not exist or cannot work (exit code 2)."""


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


class CaptureError(EdgeExportError):
    """Stage 1 failed: PyTorch could not capture the model into a graph."""


class ConversionError(EdgeExportError):
    """Stage 2 failed: the captured graph could not be converted for the target."""


class ParityError(EdgeExportError):
    """The converted model's outputs differ from the reference beyond tolerance (exit code 1)."""

    exit_code = 1
