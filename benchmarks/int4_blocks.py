"""Choose the int4-weights block size: parity error and GPT-2 decode speed for each candidate, one run.

Usage: python benchmarks/int4_blocks.py [--blocks 32 64 128] [--preset full] [--new-tokens 32] [--repeats 3]

For each block size, GPT-2 (``causal-lm-with-past``, random weights, seed 0) is converted to
onnx int4-weights (one capture, shared) and measured two ways: the worst max and RMS error in
spreads of every output over the golden cases (as benchmarks/parity_errors.py measures them),
and greedy decode tokens/s on onnxruntime (16-token prompt, batch 1, median of ``--repeats``,
interleaved over the block sizes). fp32 is the speed baseline. Prints a table and writes
benchmarks/results/int4_blocks.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from generation import time_ours  # noqa: E402
from parity_errors import LOOSE, measure  # noqa: E402

from edgeexport.artifact import Artifact  # noqa: E402
from edgeexport.conversion import convert  # noqa: E402
from edgeexport.generator import Generator  # noqa: E402
from edgeexport.onnxtools import capture as onnx_capture  # noqa: E402
from edgeexport.onnxtools import passes as onnx_passes  # noqa: E402
from edgeexport.runner import load  # noqa: E402


def memoize_capture() -> None:
    """Capture each graph once for every conversion of this process."""
    capture, memo = onnx_capture.capture, {}

    def memoized(reference: Any, *, opset: int | None) -> Any:
        graph = (tuple(reference.input_names), tuple(reference.output_names), opset)
        if graph not in memo:
            model, info = capture(reference, opset=opset)
            memo[graph] = (model.SerializeToString(), info)
        import onnx

        return onnx.load_from_string(memo[graph][0]), dict(memo[graph][1])

    onnx_capture.capture = memoized


def errors(result: Any) -> dict[str, float]:
    """Worst max and RMS error in spreads over every component's golden cases."""
    worst = {"max_error": 0.0, "rms_error": 0.0}
    for role in getattr(result.reference, "components", {"": None}):
        artifact = Artifact.open(result.artifact / role)
        with load(result.artifact / role) as runner:
            for golden in artifact.manifest.golden:
                inputs, expected = artifact.load_golden(golden)
                got = runner(inputs)
                for name, want in expected.items():
                    found = measure(got[name], want, name in artifact.manifest.logits_outputs)
                    worst = {k: max(v, found[k]) for k, v in worst.items()}
    return worst


def run(*, blocks: list[int], preset: str, new_tokens: int, repeats: int, threads: int) -> dict[str, Any]:
    memoize_capture()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        calls = {}
        for block in [0, *blocks]:
            label = f"int4 block {block}" if block else "fp32"
            if block:
                onnx_passes.WEIGHT_QUANTIZATION["int4-weights"] = (4, block)
            result = convert("gpt2", task="causal-lm-with-past", preset=preset, target="onnx",
                             precision="int4-weights" if block else "fp32", output_dir=Path(tmp) / label,
                             validate=False, tolerance=LOOSE)
            rows[label] = {"block": block, **errors(result), "tokens_per_s": []}
            ids = np.random.default_rng(0).integers(0, 1000, (1, 16))
            generator = stack.enter_context(Generator.load(result.artifact, threads=threads))
            calls[label] = lambda generator=generator, ids=ids: time_ours(generator, ids, new_tokens)
        for call in calls.values():
            call()  # warm-up
        for _ in range(repeats):
            for label, call in calls.items():
                rows[label]["tokens_per_s"].append(call()[1])
    for row in rows.values():
        samples = row.pop("tokens_per_s")
        row.update(tokens_per_s=statistics.median(samples), tokens_per_s_range=[min(samples), max(samples)])
    return {"model": f"gpt2 causal-lm-with-past ({preset}, seed 0)", "threads": threads, "new_tokens": new_tokens,
            "repeats": repeats, "rows": list(rows.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--preset", default="full", choices=("tiny", "full"))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int4_blocks.json"))
    args = parser.parse_args()
    report = run(blocks=args.blocks, preset=args.preset, new_tokens=args.new_tokens, repeats=args.repeats,
                 threads=args.threads)
    print(f"{'artifact':<16}{'max err':>10}{'rms err':>10}{'tokens/s':>10}  range")
    for row in report["rows"]:
        label = f"int4 block {row['block']}" if row["block"] else "fp32"
        print(f"{label:<16}{row['max_error']:>10.3g}{row['rms_error']:>10.3g}{row['tokens_per_s']:>10.1f}  "
              f"{row['tokens_per_s_range'][0]:.1f}-{row['tokens_per_s_range'][1]:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
