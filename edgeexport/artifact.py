"""The artifact folder and its ``manifest.json``: the contract between exporters, runtimes and validation.

An artifact is a self-contained folder::

    manifest.json          what the model is, its I/O, precision, tolerance, versions, hashes
    model.sig              optional: its signature (:mod:`edgeexport.signing`), not listed in the manifest
    model.onnx | ...       the target's model files (named in ``manifest.files``)
    golden/<case>_inputs.bin, golden/<case>_outputs.bin
                           reference inputs and PyTorch outputs, one pair per shape case: raw
                           little-endian tensors indexed in the manifest (README, "Artifact layout")

Artifacts are written into a temporary sibling folder and renamed into place, so a failed or
interrupted conversion leaves the output path as it was. Reading treats the folder as
untrusted: the manifest is schema-checked, every path must stay inside the folder and every
file's sha256 must match. What the manifest holds, and its parsing, is :mod:`edgeexport.manifest`;
this module reads and writes the folder around it. It imports neither torch nor any runtime.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeexport import interrupts
from edgeexport.errors import ArtifactError, OutputDirError, UsageError
from edgeexport.manifest import (
    GOLDEN_ALIGNMENT,
    GOLDEN_DTYPES,
    GoldenCase,
    GoldenFile,
    GoldenTensor,
    Manifest,
)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "model.sig"  # written by edgeexport.signing after the manifest; never listed in it
GOLDEN_DIR = "golden"
ALWAYS_RECORDED = ("edgeexport", "numpy")  # tool versions every manifest records, beside its target's


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tool_versions(packages: Iterable[str]) -> dict[str, str]:
    """Versions of those of ``packages`` (distribution names) that are installed."""
    versions = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def resolve_inside(root: Path, relative: str) -> Path:
    """Return ``root/relative`` or raise if the path is absolute or leaves ``root``."""
    candidate = Path(relative)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root.resolve()):
        raise ArtifactError(f"artifact path {relative!r} points outside the artifact folder; refusing to read it")
    return resolved


# --------------------------------------------------------------------------- writing


def check_output_dir(path: Path, *, force: bool) -> None:
    """Refuse an output path that is a file, a non-empty folder (unless ``force``) or not writable."""
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output path {str(path)!r} is a file; choose a folder path with -o")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputDirError(f"output folder {str(path)!r} is not empty; choose another -o or pass --force to replace it")
    parent = path.parent if not path.exists() else path
    while not parent.exists():
        parent = parent.parent
    if not _writable(parent):
        raise OutputDirError(f"output folder {str(path)!r} is not writable; choose another -o")


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def staged_output(path: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` atomically.

    On any exception (KeyboardInterrupt included), or when Ctrl-C was pressed but its exception
    was swallowed (:mod:`edgeexport.interrupts`), the temporary folder is removed and ``path`` is
    left exactly as it was.
    """
    check_output_dir(path, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named before it is made (not tempfile.mkdtemp), so that an interrupt landing just after
    # the folder is created, before mkdtemp would have returned its name, still removes it.
    stage = path.parent / f".{path.name}.partial-{secrets.token_hex(6)}"
    try:
        stage.mkdir(mode=0o700)
        yield stage
        interrupts.raise_if_requested()
        _replace(stage, path)
    except OSError as exc:  # a full disk or a vanished folder: the user's environment, not a bug
        raise OutputDirError(f"writing {str(path)!r} failed: {exc.strerror or exc}; nothing was written") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace(stage: Path, path: Path) -> None:
    if not path.exists():
        stage.rename(path)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    backup.rmdir()
    path.rename(backup)
    try:
        stage.rename(path)
    except BaseException:
        backup.rename(path)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def save_golden(folder: Path, case: str, axes: dict[str, int], inputs: Mapping[str, np.ndarray],
                outputs: Mapping[str, np.ndarray]) -> GoldenCase:
    """Write one golden case (inputs and reference outputs) under ``folder/golden``."""
    (folder / GOLDEN_DIR).mkdir(exist_ok=True)
    return GoldenCase(name=case, axes=dict(axes),
                      inputs=save_tensors(folder, f"{GOLDEN_DIR}/{case}_inputs.bin", inputs),
                      outputs=save_tensors(folder, f"{GOLDEN_DIR}/{case}_outputs.bin", outputs))


def save_tensors(folder: Path, relative: str, arrays: Mapping[str, np.ndarray]) -> GoldenFile:
    """Write ``arrays`` to ``folder/relative`` as raw little-endian C-order bytes, each starting at a
    multiple of :data:`GOLDEN_ALIGNMENT` (zero bytes between), and return their index.

    Raises:
        UsageError: an array's dtype is not one of :data:`GOLDEN_DTYPES` (a model returning float64).
    """
    tensors, offset = [], 0
    with open(folder / relative, "wb") as handle:
        for name, array in arrays.items():
            dtype = np.asarray(array).dtype.name
            if dtype not in GOLDEN_DTYPES:
                raise UsageError(f"tensor {name!r} is {dtype}; an artifact holds {', '.join(GOLDEN_DTYPES)}, "
                                 "so cast it in the model")
            raw = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
            padding = -offset % GOLDEN_ALIGNMENT
            handle.write(bytes(padding) + raw)
            offset += padding
            tensors.append(GoldenTensor(name=name, dtype=dtype, shape=tuple(int(d) for d in np.shape(array)),
                                        offset=offset, nbytes=len(raw), sha256=hashlib.sha256(raw).hexdigest()))
            offset += len(raw)
    return GoldenFile(file=relative, tensors=tuple(tensors))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by :func:`save_npz` (pickled objects refused)."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` that ``np.load`` reads, byte-identical for equal arrays.

    np.savez stamps zip entries with the current time; the entries are written here with a
    fixed date so that converting the same model twice gives byte-identical calibration files.
    """
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def write_manifest(folder: Path, manifest: Manifest, tool_packages: Iterable[str] | None = None) -> Manifest:
    """Hash every file in ``folder`` (but the manifest and a signature), stamp versions and time, and write
    ``manifest.json``.

    Args:
        folder: The artifact folder.
        manifest: Its manifest (updated in place and returned).
        tool_packages: Distributions whose installed versions to record, besides
            :data:`ALWAYS_RECORDED` (the exporter's and the runtime's ``tool_packages``).
            Defaults to those the manifest records already.
    """
    manifest.files = {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME
        and p.relative_to(folder).as_posix() != SIGNATURE_NAME
    }
    recorded = manifest.tool_versions if tool_packages is None else tool_packages
    manifest.tool_versions = tool_versions(dict.fromkeys([*ALWAYS_RECORDED, *recorded]))
    manifest.created_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return manifest


# --------------------------------------------------------------------------- reading

MAX_MANIFEST_BYTES = 4 << 20


def read_json(path: Path, *, kind: str) -> Any:
    """Parse a JSON file of an untrusted folder, refusing files over :data:`MAX_MANIFEST_BYTES`.

    ``kind`` names the folder (artifact, bundle) in the error messages.
    """
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path.name} is larger than {MAX_MANIFEST_BYTES} bytes; refusing to parse it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path.name} is not valid JSON ({exc}); the {kind} is corrupt, re-run convert") from None


@dataclass
class Artifact:
    """An artifact folder opened for reading. ``open`` parses the manifest; ``verify`` checks hashes."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | Path) -> Artifact:
        root = Path(path)
        manifest_path = root / MANIFEST_NAME
        if not root.is_dir():
            raise ArtifactError(f"artifact folder {str(root)!r} does not exist; pass the folder written by 'edgeexport convert'")
        if not manifest_path.is_file():
            raise ArtifactError(f"{str(root)!r} has no {MANIFEST_NAME}; it is not an edgeexport artifact")
        manifest = Manifest.from_dict(read_json(manifest_path, kind="artifact"))
        artifact = cls(path=root, manifest=manifest)
        golden_files = [index.file for case in manifest.golden for index in (case.inputs, case.outputs)]
        if manifest.evaluation:
            evaluation = manifest.evaluation
            examples = evaluation.get("files") or [evaluation.get("texts") or evaluation["sequences"]["file"]]
            golden_files += [evaluation["reference"]["file"], *examples]
        for relative in (manifest.model_file, *manifest.files, *golden_files):
            resolve_inside(root, relative)
        return artifact

    def file(self, relative: str) -> Path:
        """Absolute path of a file listed in the manifest, checked to stay inside the folder."""
        return resolve_inside(self.path, relative)

    @property
    def model_path(self) -> Path:
        return self.file(self.manifest.model_file)

    def verify(self) -> None:
        """Check that every listed file exists and matches its sha256."""
        for relative, expected in self.manifest.files.items():
            path = self.file(relative)
            if not path.is_file():
                raise ArtifactError(f"artifact file {relative!r} is missing; the artifact is incomplete, re-run convert")
            if sha256_file(path) != expected:
                raise ArtifactError(f"artifact file {relative!r} does not match its sha256 in the manifest; it was modified or corrupted")

    def load_golden(self, case: GoldenCase) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Inputs and reference outputs of one golden case, each tensor checked against its index."""
        return self.read_tensors(case.inputs), self.read_tensors(case.outputs)

    def read_tensors(self, index: GoldenFile) -> dict[str, np.ndarray]:
        """The tensors of a ``.bin`` file the manifest indexes, each checked against its sha256."""
        try:
            data = bytearray(self.file(index.file).read_bytes())  # a bytearray, so the arrays are writable
        except OSError as exc:
            raise ArtifactError(f"golden file {index.file!r} cannot be read ({exc.strerror or exc}); "
                                "the artifact is corrupt") from None
        arrays = {}
        for tensor in index.tensors:
            where = f"golden tensor {tensor.name!r} of {index.file!r}"
            end = tensor.offset + tensor.nbytes
            if end > len(data):
                raise ArtifactError(f"{where} ends at byte {end}, past the file's {len(data)} bytes; "
                                    "the artifact is corrupt")
            raw = memoryview(data)[tensor.offset:end]
            if hashlib.sha256(raw).hexdigest() != tensor.sha256:
                raise ArtifactError(f"{where} does not match its sha256 in the manifest; the artifact is corrupt")
            dtype = np.dtype(tensor.dtype).newbyteorder("<")
            arrays[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
        return arrays
