"""Quieting chatty libraries (torch.onnx, onnxscript, nncf, coremltools): raised log levels, and
:func:`quiet`, the one helper that also keeps their error messages and drops their prints.

Imports nothing heavy, so runtimes (which never import torch) can use it too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterable, Iterator


@contextlib.contextmanager
def logger_levels(names: Iterable[str], level: int) -> Iterator[None]:
    """Set the named loggers to ``level`` inside the block and restore their own levels after."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, previous in zip(loggers, saved):
            logger.setLevel(previous)


class _ErrorRecords(logging.Handler):
    """Keeps the messages of the error records it sees."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def quiet(names: Iterable[str], *, stdout: bool = False, stderr: bool = False) -> Iterator[list[str]]:
    """Silence libraries inside the block; yield the error messages their loggers log.

    The named loggers are set to ERROR and their error records are kept (they often name what
    failed, e.g. the op coremltools could not convert) instead of shown; Python warnings are
    ignored; with ``stdout``/``stderr``, what is printed there (progress bars) is dropped.
    Exceptions still raise.
    """
    loggers = [logging.getLogger(name) for name in names]
    records = _ErrorRecords()
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.propagate = False
    try:
        with warnings.catch_warnings(), logger_levels([logger.name for logger in loggers], logging.ERROR), \
                contextlib.ExitStack() as streams:
            warnings.simplefilter("ignore")
            if stdout:
                streams.enter_context(contextlib.redirect_stdout(io.StringIO()))
            if stderr:
                streams.enter_context(contextlib.redirect_stderr(io.StringIO()))
            yield records.messages
    finally:
        for logger, previous in zip(loggers, propagate):
            logger.removeHandler(records)
            logger.propagate = previous
