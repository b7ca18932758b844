"""Temporarily raised log levels for chatty libraries (torch.onnx, onnxscript, nncf, coremltools).

Imports nothing heavy, so runtimes (which never import torch) can use it too.
"""

from __future__ import annotations

import contextlib
import logging
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
