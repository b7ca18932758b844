"""PyTorch eager vs onnxruntime vs OpenVINO fp32 vs OpenVINO int8, full presets, side by side in one run.

Usage: python benchmarks/latency_openvino.py [--models bert vit] [--iterations 20] [--rounds 3] [--threads 2]

Each model is built at its published size (random weights, seeded) and converted to ONNX
(fp32), OpenVINO fp32 and OpenVINO int8 (nncf post-training quantization); the OpenVINO
artifacts are parity-checked on the way. All backends run the same inputs (batch 1; BERT-base
at sequence 128, ViT-base 224x224) with the same thread count (torch.set_num_threads,
onnxruntime intra-op threads, OpenVINO INFERENCE_NUM_THREADS with the latency hint). The
backends are timed in ``--rounds`` interleaved rounds, so load on the shared machine hits all
of them alike; the table shows the median round's p50. Prints a table and writes
benchmarks/results/latency_openvino.json. Report ratios, not lone times: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgeexport.pipeline import convert
from edgeexport.reference import ReferenceModel
from edgeexport.runner import Runner, load
from edgeexport.validation.latency import LatencyStats, measure

SIZES = {"bert": {"batch": 1, "sequence": 128}, "vit": {"batch": 1}}
ARTIFACTS = {"onnxruntime fp32": ("onnx", "fp32"), "openvino fp32": ("openvino", "fp32"),
             "openvino int8": ("openvino", "int8")}
RUNNER_OPTIONS = {"onnx": lambda threads: {"threads": threads},
                  "openvino": lambda threads: {"threads": threads, "performance_hint": "latency"}}


def bench_model(name: str, *, iterations: int, rounds: int, threads: int) -> dict[str, Any]:
    """Convert ``name`` three ways and time every backend on the same inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: convert(name, preset="full", target=target, precision=precision,
                                  output_dir=Path(tmp) / label.replace(" ", "-"), validate=target == "openvino")
                   for label, (target, precision) in ARTIFACTS.items()}
        reference = results["openvino fp32"].reference
        inputs = reference.make_inputs(SIZES[name], seed=0)
        runners = {label: load(result.artifact, **RUNNER_OPTIONS[ARTIFACTS[label][0]](threads))
                   for label, result in results.items()}
        calls: dict[str, Callable[[], float | None]] = {"pytorch eager": _eager(reference, inputs)}
        calls.update({label: _backend(runner, inputs) for label, runner in runners.items()})
        timings: dict[str, list[LatencyStats]] = {label: [] for label in calls}
        for _ in range(rounds):
            for label, call in calls.items():
                timings[label].append(measure(call, label=label, batch=1, iterations=iterations))
        for runner in runners.values():
            runner.deactivate()
    rows = []
    for label, stats in timings.items():
        median = sorted(stats, key=lambda s: s.p50_ms)[len(stats) // 2]
        report = results[label].report if label in results else None
        rows.append({"backend": label, **median.to_dict(), "round_p50_ms": [s.p50_ms for s in stats],
                     "parity": None if report is None else _parity(report)})
    eager = rows[0]["p50_ms"]
    for row in rows:
        row["speedup_vs_eager"] = eager / row["p50_ms"]
    return {"model": name, "shape": SIZES[name], "architecture": reference.architecture, "rows": rows}


def _eager(reference: ReferenceModel, inputs: dict[str, np.ndarray]) -> Callable[[], None]:
    def call() -> None:
        reference.run(inputs)
    return call


def _backend(runner: Runner, inputs: dict[str, np.ndarray]) -> Callable[[], float]:
    """A call returning the backend's own time (input checks and copies excluded)."""
    runner.activate()

    def call() -> float:
        runner(inputs)
        return runner.last_inference_time
    return call


def _parity(report: Any) -> dict[str, Any]:
    """Pass/fail and the worst cosine, max abs error and top-1 agreement over all cases."""
    outputs = [o for case in report.cases for o in case.outputs]
    top1 = [o.top1 for o in outputs if o.top1 is not None]
    return {"passed": report.passed, "min_cosine": min(o.cosine for o in outputs),
            "max_abs": max(o.max_abs for o in outputs), "min_top1": min(top1) if top1 else None,
            "failures": report.failures()}


def run(models: list[str], *, iterations: int, rounds: int, threads: int, out: Path) -> dict[str, Any]:
    torch.set_num_threads(threads)
    report = {"machine": platform.processor() or platform.machine(), "threads": threads, "torch": torch.__version__,
              "iterations": iterations, "rounds": rounds,
              "models": [bench_model(name, iterations=iterations, rounds=rounds, threads=threads) for name in models]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def show(report: dict[str, Any]) -> None:
    table = Table(title=f"latency, batch 1, full presets (random weights), {report['threads']} threads, "
                        f"median of {report['rounds']} rounds x {report['iterations']} iterations")
    for column in ("model", "backend", "p50 ms", "p90 ms", "speed-up vs eager", "parity (min cosine, min top-1)"):
        table.add_column(column, justify="left" if column in ("model", "backend", "parity") else "right")
    for model in report["models"]:
        shape = ",".join(f"{k}={v}" for k, v in model["shape"].items())
        for row in model["rows"]:
            parity = row["parity"]
            checked = "-" if parity is None else (
                f"{'PASS' if parity['passed'] else 'FAIL'} ({parity['min_cosine']:.4f}, {parity['min_top1']})")
            table.add_row(f"{model['model']} ({shape})", row["backend"], f"{row['p50_ms']:.1f}", f"{row['p90_ms']:.1f}",
                          f"{row['speedup_vs_eager']:.2f}x", checked)
    Console(width=160).print(table)


def main() -> None:
    # Run as a script, this file's folder leads sys.path and its name would shadow the openvino package.
    if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency_openvino.json")
    args = parser.parse_args()
    show(run(args.models, iterations=args.iterations, rounds=args.rounds, threads=args.threads, out=args.out))


if __name__ == "__main__":
    main()
