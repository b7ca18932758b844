"""Ctrl-C that is never lost while the command line runs.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be. When that is a
``__del__`` method or a weakref callback (the garbage collector runs them at any allocation),
the exception is printed as "Exception ignored in ..." and dropped, and the conversion would go
on to commit its artifact as if Ctrl-C had never been pressed. Inside :func:`recorded`, the
SIGINT handler also notes the request, :func:`edgeexport.artifact.staged_output` refuses to
commit once one was made (:func:`raise_if_requested`), and the command line exits 130 even when
the exception itself was swallowed. No library offers this; it is Python's signal semantics.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_requested = False


def requested() -> bool:
    """Whether Ctrl-C was pressed inside :func:`recorded` (even if its exception was swallowed)."""
    return _requested


def raise_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed; call before committing work."""
    if _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def recorded() -> Iterator[None]:
    """Record Ctrl-C for the duration of a command (main thread, default SIGINT handling only).

    The record is cleared on leaving, so check :func:`requested` inside.

    A process that ignores SIGINT (a background job) keeps ignoring it; other threads, which
    cannot set signal handlers, run unchanged.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous_hook = sys.unraisablehook
    signal.signal(signal.SIGINT, _record_and_raise)
    sys.unraisablehook = lambda unraisable: _report_unless_interrupt(unraisable, previous_hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook
        _requested = False


def _record_and_raise(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _report_unless_interrupt(unraisable: Any, previous_hook: Any) -> None:
    """Drop the "Exception ignored" report of a recorded Ctrl-C; it is acted on, not lost."""
    if not (_requested and isinstance(unraisable.exc_value, KeyboardInterrupt)):
        previous_hook(unraisable)
