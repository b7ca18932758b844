"""Greedy generation with a KV cache: PyTorch ``generate()`` vs edgeexport's loop on every backend, one run.

Usage: python benchmarks/generation.py [--prompt-tokens 16] [--new-tokens 32] [--repeats 3] [--threads 2]
                                       [--backends onnxruntime-fp32 openvino-int8-weights ...]

GPT-2 124M (published size, random weights, seeded, with an untied LM head: the zoo's tied one
repeats a single greedy token, which would make "same tokens" trivially true) is saved with
``save_pretrained`` and converted to ``causal-lm-with-past`` artifacts: ONNX fp32, int8-weights
and int4-weights (onnxruntime MatMulNBits) run by onnxruntime, OpenVINO fp32, bf16 (fp32 weights,
bf16 arithmetic where the CPU has it), int8-weights and int4-weights (nncf) run by OpenVINO. Every backend gets the same 16-token prompt
(batch 1) and generates 32 tokens greedily with the same thread count (torch.set_num_threads,
onnxruntime intra-op threads, OpenVINO INFERENCE_NUM_THREADS). Each backend runs once
untimed, then ``--repeats`` times, interleaved so load on the shared machine hits all alike;
the table shows medians of tokens/s (generated tokens over the whole call, prompt included)
and first-token latency (prompt forward pass + first token), and how many generated tokens
equal PyTorch's (fp32 must match all; quantized weights may pick another token where random
weights leave near-ties), beside how many distinct tokens PyTorch generated. Prints a table and writes benchmarks/results/generation.json.
Report ratios, not lone times: the machines are shared.

optimum's ORTModelForCausalLM is not included: optimum-onnx 0.1.0 (the only release) requires
transformers<4.58, and edgeexport needs transformers>=5.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers.generation.streamers import BaseStreamer

from edgeexport.conversion import convert
from edgeexport.generator import Generator
from edgeexport.validation.machine import machine_info


class FirstTokenClock(BaseStreamer):
    """Records when transformers' generate() emits its first new token (its first put() is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        """Nothing to flush."""


def time_pytorch(model: torch.nn.Module, ids: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    """Tokens, tokens/s and first-token seconds of one greedy ``generate()``."""
    clock = FirstTokenClock()
    prompt = torch.from_numpy(ids)
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
                             max_new_tokens=new_tokens, streamer=clock, pad_token_id=model.config.eos_token_id)
        total = time.perf_counter() - start
    tokens = out[0, ids.shape[1]:].tolist()
    return tokens, len(tokens) / total, clock.first - start


def time_ours(generator: Generator, ids: np.ndarray, new_tokens: int) -> tuple[list[int], float, float]:
    output = generator.generate(ids, max_new_tokens=new_tokens)
    return output.tokens[0].tolist(), output.tokens_per_s, output.first_token_s


ARTIFACTS = {"onnxruntime-fp32": ("onnx", "fp32"), "onnxruntime-int8-weights": ("onnx", "int8-weights"),
             "onnxruntime-int4-weights": ("onnx", "int4-weights"),
             "openvino-fp32": ("openvino", "fp32"), "openvino-bf16": ("openvino", "bf16"),
             "openvino-int8-weights": ("openvino", "int8-weights"), "openvino-int4-weights": ("openvino", "int4-weights")}
EAGER = "pytorch eager generate()"
Timing = tuple[list[int], float, float]


def save_untied_gpt2(folder: Path) -> Path:
    """GPT-2 124M with seeded random weights and an untied LM head, saved with ``save_pretrained``."""
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(tie_word_embeddings=False)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def run(*, prompt_tokens: int, new_tokens: int, repeats: int, threads: int, backends: list[str], out: Path) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        source = save_untied_gpt2(Path(tmp) / "gpt2-untied")
        results = {label: convert(source, task="causal-lm-with-past", target=ARTIFACTS[label][0],
                                  precision=ARTIFACTS[label][1], output_dir=Path(tmp) / label, validate=False)
                   for label in backends}
        model = next(iter(results.values())).reference.module.model
        ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, prompt_tokens))
        calls: dict[str, Callable[[], Timing]] = {EAGER: lambda: time_pytorch(model, ids, new_tokens)}
        for label, result in results.items():
            generator = stack.enter_context(Generator.load(result.artifact, threads=threads))
            calls[label] = lambda generator=generator: time_ours(generator, ids, new_tokens)
        for call in calls.values():
            call()  # warm-up
        timings: dict[str, list[Timing]] = {label: [] for label in calls}
        for _ in range(repeats):
            for label, call in calls.items():
                timings[label].append(call())
    expected = timings[EAGER][0][0]
    rows = [{"backend": label, "tokens_per_s": statistics.median(t[1] for t in runs),
             "first_token_ms": statistics.median(t[2] for t in runs) * 1e3, "runs": len(runs),
             "same_tokens": min(sum(a == b for a, b in zip(t[0], expected)) for t in runs),
             "distinct_tokens": len(set(runs[0][0]))}
            for label, runs in timings.items()]
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / base
    report = {
        "model": "gpt2 (124M, random weights, untied LM head)", "machine": machine_info(threads),
        "threads": threads, "torch": torch.__version__, "batch": 1, "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens, "rows": rows,
        "optimum": "not installable: optimum-onnx 0.1.0 requires transformers<4.58; edgeexport needs transformers>=5",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def show(report: dict) -> None:
    table = Table(title=f"greedy generation, GPT-2 124M, batch 1, {report['prompt_tokens']}-token prompt, "
                        f"{report['new_tokens']} new tokens, {report['threads']} threads (medians)")
    for column in ("backend", "tokens/s", "first token ms", "speed-up", "tokens = PyTorch's", "distinct tokens"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for row in report["rows"]:
        table.add_row(row["backend"], f"{row['tokens_per_s']:.1f}", f"{row['first_token_ms']:.1f}",
                      f"{row['speedup']:.2f}x", f"{row['same_tokens']}/{report['new_tokens']}",
                      str(row["distinct_tokens"]))
    console = Console(width=140)
    console.print(table)
    console.print(f"optimum: {report['optimum']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", choices=list(ARTIFACTS), default=list(ARTIFACTS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "generation.json")
    args = parser.parse_args()
    show(run(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
             backends=args.backends, out=args.out))


if __name__ == "__main__":
    main()
