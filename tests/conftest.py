"""Shared fixtures: small artifacts converted once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeexport.pipeline import ConversionResult, convert


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
