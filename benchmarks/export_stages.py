"""Where ``edgeexport convert MODEL --target onnx`` spends its time and memory, stage by stage.

Usage: python benchmarks/export_stages.py [--model bert] [--preset full] [--out FOLDER]

Wraps the conversion's steps (building the reference, its golden outputs, the ONNX exporter's
stages and the parity check) with a timer and reads the process's peak RSS after each, then
prints one row per step: seconds, and the peak RSS so far (a step that raises it is the one
that costs the memory). One process, one conversion (validation on, as ``convert`` runs).
"""

from __future__ import annotations

import argparse
import functools
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from edgeexport import conversion
from edgeexport.exporters import onnx as onnx_target
from edgeexport.onnxtools import capture as onnx_capture
from edgeexport.onnxtools import passes as onnx_passes
from edgeexport.validation import parity

STEPS: list[tuple[ModuleType, str]] = [
    (conversion, "_reference"), (conversion, "_golden"), (onnx_capture, "capture"), (onnx_passes, "infer_shapes"),
    (onnx_passes, "simplify"), (onnx_passes, "fuse_for_ort"), (onnx_passes, "save"), (onnx_target, "check_fused"),
    (parity, "_check_one")]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(function: Callable[..., Any], rows: list[tuple[str, float, float]]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = function(*args, **kwargs)
        rows.append((function.__name__, time.perf_counter() - start, peak_rss_mb()))
        return result

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert")
    parser.add_argument("--preset", default="full", choices=("tiny", "full"))
    parser.add_argument("--out", type=Path, default=None, help="Artifact folder (default: a temporary one).")
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    for module, name in STEPS:
        setattr(module, name, timed(getattr(module, name), rows))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        conversion.convert(args.model, preset=args.preset, output_dir=args.out or Path(tmp) / "artifact", force=True)
        total = time.perf_counter() - start
    print(f"{'step':<16}{'seconds':>9}{'peak RSS so far (MB)':>22}")
    for name, seconds, rss in rows:
        print(f"{name:<16}{seconds:>9.1f}{rss:>22.0f}")
    print(f"{'total':<16}{total:>9.1f}{peak_rss_mb():>22.0f}")


if __name__ == "__main__":
    main()
