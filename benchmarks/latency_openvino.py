"""PyTorch eager vs onnxruntime vs OpenVINO fp32 vs OpenVINO int8, full presets, side by side in one run.

Usage: python benchmarks/latency_openvino.py [--models bert vit] [--iterations 20] [--rounds 3] [--threads 2]

Each model is built at its published size (random weights, seeded) and converted to ONNX
(fp32), OpenVINO fp32 and OpenVINO int8 (nncf post-training quantization); the OpenVINO
artifacts are parity-checked on the way. All backends run the same inputs (batch 1; BERT-base
at sequence 128, ViT-base 224x224) with the same thread count (torch.set_num_threads,
onnxruntime intra-op threads, OpenVINO INFERENCE_NUM_THREADS with the latency hint). The
backends are timed in ``--rounds`` interleaved rounds, so load on the shared machine hits all
of them alike; each backend runs alone in its own process, timed at the numpy boundary
(:func:`edgeexport.pipeline.compare_latency`). Prints a table and writes
benchmarks/results/latency_openvino.json with the CPU model and flags. Report ratios, not lone
times: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeexport.conversion import convert
from edgeexport.pipeline import compare_latency
from edgeexport.validation.latency import speedup
from edgeexport.validation.machine import describe_machine, machine_info

SIZES = {"bert": {"batch": 1, "sequence": 128}, "vit": {"batch": 1}}
ARTIFACTS = {"onnxruntime fp32": ("onnx", "fp32"), "openvino fp32": ("openvino", "fp32"),
             "openvino int8": ("openvino", "int8")}
RUNNER_OPTIONS = {"onnx": lambda threads: {"threads": threads},
                  "openvino": lambda threads: {"threads": threads, "performance_hint": "latency"}}


def bench_model(name: str, *, iterations: int, rounds: int, threads: int) -> dict[str, Any]:
    """Convert ``name`` three ways and time every backend on the same inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: convert(name, preset="full", target=target, precision=precision,
                                  output_dir=Path(tmp) / label.replace(" ", "-"))
                   for label, (target, precision) in ARTIFACTS.items()}
        reference = results["openvino fp32"].reference
        stats = compare_latency([r.artifact for r in results.values()], reference=reference,
                                inputs=reference.make_inputs(SIZES[name], seed=0), iterations=iterations, rounds=rounds,
                                runner_options=[RUNNER_OPTIONS[ARTIFACTS[label][0]](threads) for label in results])
    rows = []
    for label, timing in zip(["pytorch eager", *results], stats):
        report = results[label].report if label in results else None
        rows.append({"backend": label, **timing.to_dict(), "speedup_vs_eager": speedup(stats[0], timing).value,
                     "speedup_note": speedup(stats[0], timing).reason, "parity": None if report is None else {
                         "passed": report.passed, "failures": report.failures()}})
    return {"model": name, "shape": SIZES[name], "architecture": reference.architecture, "rows": rows}


def run(models: list[str], *, iterations: int, rounds: int, threads: int, out: Path) -> dict[str, Any]:
    report = {"machine": machine_info(threads), "iterations": iterations, "rounds": rounds,
              "models": [bench_model(name, iterations=iterations, rounds=rounds, threads=threads) for name in models]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def show(report: dict[str, Any]) -> None:
    machine = report["machine"]
    table = Table(title=f"latency per call, batch 1, full presets (random weights), {machine['threads']} threads, "
                        f"{report['rounds']} rounds, {report['iterations']} samples; {describe_machine(machine)}")
    for column in ("model", "backend", "p50 ms", "p10-p90 ms", "speed-up vs eager", "parity"):
        table.add_column(column, justify="left" if column in ("model", "backend", "parity") else "right")
    for model in report["models"]:
        shape = ",".join(f"{k}={v}" for k, v in model["shape"].items())
        for row in model["rows"]:
            parity = row["parity"]
            checked = "-" if parity is None else "PASS" if parity["passed"] else "FAIL"
            ratio = f"{row['speedup_vs_eager']:.2f}x" if row["speedup_vs_eager"] else f"n/a ({row['speedup_note']})"
            table.add_row(f"{model['model']} ({shape})", row["backend"], f"{row['p50_ms']:.1f}",
                          f"{row['p10_ms']:.1f}-{row['p90_ms']:.1f}", ratio, checked)
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
