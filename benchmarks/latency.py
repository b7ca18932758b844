"""PyTorch eager vs edgeexport's ONNX artifact on onnxruntime, full presets, side by side in one run.

Usage: python benchmarks/latency.py [--models bert gpt2 vit wav2vec2] [--iterations 20] [--threads 2]

Each model is built at its published size (random weights), converted to ONNX (fp32), and
both backends run the same inputs (batch 1; BERT and GPT-2 at sequence 128, ViT 224x224,
Wav2Vec2 one second of 16 kHz audio) with the same thread count. Prints a table and writes
benchmarks/results/latency.json. Report ratios, not lone times: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgeexport.conversion import convert
from edgeexport.pipeline import bench
from edgeexport.validation.latency import speedup
from edgeexport.validation.machine import describe_machine, machine_info

SIZES = {"bert": {"batch": 1, "sequence": 128}, "gpt2": {"batch": 1, "sequence": 128},
         "vit": {"batch": 1}, "wav2vec2": {"batch": 1, "audio_length": 16000}}


def run(models: list[str], *, iterations: int, threads: int, out: Path) -> dict:
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as tmp:
            result = convert(name, preset="full", output_dir=Path(tmp) / name, validate=False)
            inputs = result.reference.make_inputs(SIZES[name], seed=0)
            eager, target = bench(result.artifact, reference=result.reference, inputs=inputs, iterations=iterations,
                                  threads=threads)
        ratio = speedup(eager, target)
        rows.append({"model": name, "shape": SIZES[name], "pytorch_eager": eager.to_dict(),
                     "onnxruntime": target.to_dict(), "speedup": ratio.value, "speedup_note": ratio.reason})
    report = {"machine": machine_info(threads), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report


def show(report: dict) -> None:
    table = Table(title="latency per call (ms), batch 1, full presets: PyTorch eager vs ONNX on onnxruntime, "
                        f"each alone in its own process; {describe_machine(report['machine'])}")
    for column in ("model", "shape", "eager p50", "eager p10-p90", "onnxruntime p50", "onnxruntime p10-p90", "speed-up"):
        table.add_column(column, justify="left" if column in ("model", "shape") else "right")
    for row in report["rows"]:
        eager, ort = row["pytorch_eager"], row["onnxruntime"]
        ratio = f"{row['speedup']:.2f}x" if row["speedup"] else f"n/a ({row['speedup_note']})"
        table.add_row(row["model"], ",".join(f"{k}={v}" for k, v in row["shape"].items()), f"{eager['p50_ms']:.1f}",
                      f"{eager['p10_ms']:.1f}-{eager['p90_ms']:.1f}", f"{ort['p50_ms']:.1f}",
                      f"{ort['p10_ms']:.1f}-{ort['p90_ms']:.1f}", ratio)
    Console(width=140).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    args = parser.parse_args()
    show(run(args.models, iterations=args.iterations, threads=args.threads, out=args.out))


if __name__ == "__main__":
    main()
