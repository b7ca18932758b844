"""atheris fuzzer of the manifest parser and artifact loader.

Run: python tests/fuzz/fuzz_manifest.py -runs=20000 tests/fuzz/corpus
(CI runs a fixed number of iterations, seeded with the valid manifest in tests/fuzz/corpus/, whose
golden index describes the tensor files in tests/fuzz/golden/, so fuzzed indexes reach the reader).
Any exception other than ArtifactError is a finding: fix it and keep the input as a regression
test in tests/test_fuzz_manifest.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

from edgeexport.artifact import Artifact
from edgeexport.errors import ArtifactError
from edgeexport.manifest import Manifest

FOLDER = Path(tempfile.mkdtemp(prefix="edgeexport-fuzz-"))
GOLDEN = Path(__file__).parent / "golden"


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    text = provider.ConsumeUnicodeNoSurrogates(provider.remaining_bytes())
    try:
        parsed = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    if parsed is not None:
        try:
            Manifest.from_dict(parsed)
        except ArtifactError:
            pass
    (FOLDER / "manifest.json").write_text(text, errors="surrogatepass")
    try:
        artifact = Artifact.open(FOLDER)
        for case in artifact.manifest.golden:
            artifact.load_golden(case)
        artifact.verify()
    except ArtifactError:
        pass


def main() -> None:
    try:
        shutil.copytree(GOLDEN, FOLDER / "golden")
        atheris.instrument_all()
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(FOLDER, ignore_errors=True)


if __name__ == "__main__":
    main()
