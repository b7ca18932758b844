"""Shared fixtures: small artifacts converted once per test session."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgeexport.conversion import ConversionResult, convert


@pytest.fixture(scope="session")
def bert_artifact(tmp_path_factory: pytest.TempPathFactory) -> ConversionResult:
    """A tiny BERT sequence-classification ONNX artifact (validated)."""
    folder = tmp_path_factory.mktemp("artifacts") / "bert"
    return convert("bert", output_dir=folder)


@pytest.fixture()
def artifact_copy(bert_artifact: ConversionResult, tmp_path: Path) -> Path:
    """A private copy of the BERT artifact that a test may damage."""
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(bert_artifact.artifact, target)
    return target


def _cli_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    script = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
              "from edgeexport.cli import main\n"
              f"sys.argv = ['edgeexport', *{list(args)!r}]\nmain()")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def cli_without_torch() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli_without_torch("validate", artifact)``: the ``edgeexport`` command line in a fresh
    interpreter where importing torch or transformers fails, as on a device that has only the runtime."""
    return _cli_without_torch


class _InterruptsWhenFinalized:
    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def _ctrl_c_inside_a_finalizer() -> None:
    _InterruptsWhenFinalized()  # dropped at once: Python prints its KeyboardInterrupt and goes on


@pytest.fixture()
def swallowed_ctrl_c() -> Iterator[Callable[[], None]]:
    """Press Ctrl-C where Python drops the KeyboardInterrupt (inside ``__del__``, seen in CI).

    Python's own SIGINT handler is in place meanwhile, as in a terminal (a background job
    inherits SIGINT ignored).
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield _ctrl_c_inside_a_finalizer
    signal.signal(signal.SIGINT, previous)
