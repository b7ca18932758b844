"""onnxruntime latency with and without the ONNX target's contrib-op fusions, side by side in one run.

Usage: python benchmarks/fusions.py [--models bert] [--iterations 40] [--rounds 4] [--threads 2]

Each model is built at its published size (random weights, seed 0) and converted to ONNX fp32
twice from one capture: fused (the default) and ``fusions=False``. Both artifacts run the same
inputs (batch 1, sequence 128 for text) through :func:`edgeexport.pipeline.compare_latency`:
each alone in its own process, in alternating rounds whose samples are pooled. Prints p50 and
p10-p90 per artifact, the fusion counts, and writes benchmarks/results/fusions.json. Report
ratios, not lone times: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from int4_blocks import memoize_capture  # noqa: E402
from latency import SIZES  # noqa: E402

from edgeexport.conversion import convert  # noqa: E402
from edgeexport.pipeline import compare_latency  # noqa: E402
from edgeexport.validation.machine import describe_machine, machine_info  # noqa: E402


def run(models: list[str], *, iterations: int, rounds: int, threads: int, out: Path) -> dict:
    memoize_capture()
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            fused, plain = (convert(name, preset="full", output_dir=Path(tmp) / label, validate=False,
                                    target_options=options)
                            for label, options in (("fused", None), ("plain", {"fusions": False})))
            inputs = fused.reference.make_inputs(SIZES[name], seed=0)
            stats = compare_latency([fused.artifact, plain.artifact], inputs=inputs, iterations=iterations,
                                    rounds=rounds, runner_options=[{"threads": threads}] * 2)
        rows.append({"model": name, "shape": SIZES[name], "fusions": fused.manifest.exporter.get("fusions", {}),
                     "fused": stats[0].to_dict(), "unfused": stats[1].to_dict(),
                     "speedup": stats[1].to_dict()["p50_ms"] / stats[0].to_dict()["p50_ms"]})
    report = {"machine": machine_info(threads), "iterations": iterations, "rounds": rounds, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def show(report: dict) -> None:
    table = Table(title="onnxruntime latency per call (ms), fp32, batch 1, full presets: fused vs unfused, each "
                        f"alone in its own process; {describe_machine(report['machine'])}")
    for column in ("model", "shape", "fused p50", "fused p10-p90", "unfused p50", "unfused p10-p90", "speed-up",
                   "fusions"):
        table.add_column(column, justify="left" if column in ("model", "shape", "fusions") else "right")
    for row in report["rows"]:
        fused, plain = row["fused"], row["unfused"]
        table.add_row(row["model"], ",".join(f"{k}={v}" for k, v in row["shape"].items()), f"{fused['p50_ms']:.1f}",
                      f"{fused['p10_ms']:.1f}-{fused['p90_ms']:.1f}", f"{plain['p50_ms']:.1f}",
                      f"{plain['p10_ms']:.1f}-{plain['p90_ms']:.1f}", f"{row['speedup']:.2f}x",
                      ", ".join(f"{k} {v}" for k, v in row["fusions"].items()))
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert"], choices=list(SIZES))
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fusions.json")
    args = parser.parse_args()
    show(run(args.models, iterations=args.iterations, rounds=args.rounds, threads=args.threads, out=args.out))


if __name__ == "__main__":
    main()
