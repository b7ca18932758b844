"""edgeexport vs optimum-intel vs PyTorch eager, side by side in one run, on the same saved model folders.

Usage: python benchmarks/vs_optimum.py [--models bert vit gpt2] [--iterations 20] [--rounds 2] [--threads 2]

optimum-intel 2.2.0 needs transformers<5.6 and pulls a torchvision built for another torch
(``operator torchvision::nms does not exist`` at import), so the script runs in its own venv,
``benchmarks/.venv-optimum``: edgeexport (export and openvino extras, constraints.txt) plus
``optimum-intel[openvino]==2.2.0`` and ``transformers>=5.5,<5.6``, torchvision removed. It builds
that venv on first use (a few minutes) and re-runs itself there.

Models are saved with ``save_pretrained`` at their published sizes with seeded random weights
(BERT-base sequence classification, ViT-base image classification, GPT-2 124M with an untied LM
head so that its greedy tokens vary), and both tools convert the same folders:

- latency (BERT at sequence 128, ViT at 224x224, batch 1): PyTorch eager, every edgeexport
  OpenVINO and ONNX precision, optimum-intel's default export (its default inference precision:
  bf16 on CPUs with bf16) and its int8 weights. Each backend runs alone in its own process at the
  numpy boundary, in alternating rounds (:func:`edgeexport.validation.latency.isolated`). Every
  artifact is parity-checked by edgeexport against PyTorch (golden and fresh inputs at both shape
  cases); optimum's outputs are judged on the same inputs by the same criterion, with the bounds of
  the matching edgeexport precision. "best at parity" is edgeexport's fastest passing artifact.
- export cost: wall time and peak RSS of each export in a fresh process (edgeexport with
  ``--no-validate``, since optimum does not validate; edgeexport's default run validates too).
  Each tool exports with the transformers it supports: optimum-intel in this venv (5.5), edgeexport
  with the ``edgeexport`` of the environment the script was started from (transformers as
  constraints.txt pins it) when it has one. transformers 5.5's masks cannot be traced
  (``IndexError`` in ``sdpa_mask``), which sends edgeexport's OpenVINO conversions to its slower
  ``torch.export`` route there; the JSON records both versions.
- GPT-2 greedy generation (16-token prompt, 32 new tokens, batch 1): tokens/s of PyTorch
  ``generate()``, edgeexport's numpy loop on its artifacts and optimum-intel's ``generate()``
  (stateful OpenVINO model), medians and ranges over the repeats, how many tokens equal PyTorch's and
  how many distinct tokens PyTorch made; each edgeexport decoder's step parity against its precision's
  bounds (golden and fresh prompt and decode steps).

Prints tables and writes benchmarks/results/vs_optimum.json with the CPU model and flags. Report
ratios, not lone times: the machines are shared.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(__file__).resolve().parent / ".venv-optimum"
EXPORTER_CLI = "VS_OPTIMUM_EDGEEXPORT"  # the launching environment's edgeexport, passed to the re-run in VENV
REQUIREMENTS = ["optimum-intel[openvino]==2.2.0", "transformers>=5.5,<5.6"]
MODELS = {  # name: (transformers model class, config class, config overrides, edgeexport task, optimum class)
    "bert": ("BertForSequenceClassification", "BertConfig", {"num_labels": 2}, "sequence-classification",
             "OVModelForSequenceClassification"),
    "vit": ("ViTForImageClassification", "ViTConfig", {"num_labels": 10}, "image-classification",
            "OVModelForImageClassification"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {"tie_word_embeddings": False}, "causal-lm-with-past",
             "OVModelForCausalLM"),
}
SIZES = {"bert": {"batch": 1, "sequence": 128}, "vit": {"batch": 1}}
OPTIMUM_VARIANTS = {"optimum-intel default": {}, "optimum-intel int8 weights": {"load_in_8bit": True}}
GENERATION_PRECISIONS = ("onnx:int8-weights", "onnx:int4-weights", "openvino:fp32", "openvino:int8-weights",
                         "openvino:int4-weights", "openvino:bf16")


def ensure_venv(venv: Path = VENV, requirements: Sequence[str] = REQUIREMENTS,
                probes: Sequence[str] = ("optimum.intel",), no_deps: Sequence[str] = ()) -> None:
    """Re-run the running script in ``venv`` unless every module of ``probes`` imports here.

    The venv is built on first use: edgeexport (export and openvino extras) with constraints.txt and
    ``requirements``, then ``no_deps`` without their declared dependencies, torchvision removed.
    """
    try:
        for probe in probes:
            importlib.import_module(probe)
        return
    except ImportError:
        pass
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"building {venv} ({' '.join(requirements)} beside edgeexport)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[export,openvino]", *requirements],
                       check=True)
        if no_deps:
            subprocess.run([*pip, "--no-deps", *no_deps], check=True)
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=True)
    launching_cli = Path(sys.executable).parent / "edgeexport"
    if launching_cli.exists() and EXPORTER_CLI not in os.environ:
        os.environ[EXPORTER_CLI] = str(launching_cli)
    os.execv(str(python), [str(python), *sys.argv])


def exporter_cli() -> Path:
    """The ``edgeexport`` that exports: the launching environment's, else this venv's."""
    return Path(os.environ.get(EXPORTER_CLI) or Path(sys.executable).parent / "edgeexport")


def transformers_versions() -> dict[str, str]:
    """transformers of edgeexport's exports and of optimum-intel's (this venv)."""
    import transformers

    python = exporter_cli().parent / "python"
    version = subprocess.run([str(python), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {"edgeexport": version, "optimum-intel": transformers.__version__}


def save_model(name: str, folder: Path) -> Path:
    """``name`` at its published size with seeded random weights, saved with ``save_pretrained``."""
    import torch
    import transformers

    model_class, config_class, overrides, _, _ = MODELS[name]
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**overrides)).eval()
    model.save_pretrained(folder / name)
    return folder / name


# Linux carries a process's peak RSS across exec, so a command forked straight from this (large)
# process would report this process's size: a small launcher runs it and reports its child's peak.
LAUNCHER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def timed_process(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of ``command`` run to completion in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": int(done.stdout.split()[-1]) / 1024}


def export_edgeexport(folder: Path, task: str, target: str, precision: str, out: Path) -> dict[str, float]:
    return timed_process([str(exporter_cli()), "convert", str(folder), "--task", task, "--target", target,
                          "--precision", precision, "--no-validate", "-o", str(out)])


def export_optimum(folder: Path, optimum_class: str, options: dict[str, Any], out: Path) -> dict[str, float]:
    script = (f"from optimum.intel import {optimum_class} as M; "
              f"M.from_pretrained({str(folder)!r}, export=True, compile=False, **{options!r}).save_pretrained({str(out)!r})")
    return timed_process([sys.executable, "-c", script])


def _time_eager(folder: str, task: str, inputs: dict, warmup: int, iterations: int, threads: int) -> Any:
    import torch

    from edgeexport.reference import load_reference
    from edgeexport.validation.latency import measure

    torch.set_num_threads(threads)
    reference = load_reference(folder, task=task)
    return measure(lambda: reference.run(inputs), label="pytorch eager", batch=1, warmup=warmup, iterations=iterations)


def _time_optimum(folder: str, optimum_class: str, label: str, inputs: dict, warmup: int, iterations: int,
                  threads: int) -> Any:
    import optimum.intel

    from edgeexport.validation.latency import measure

    model = getattr(optimum.intel, optimum_class).from_pretrained(
        folder, ov_config={"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    return measure(lambda: model(**inputs), label=label, batch=1, warmup=warmup, iterations=iterations)


def optimum_parity(folder: Path, optimum_class: str, reference: Any, tolerance: Any, cases: list[dict]) -> dict:
    """optimum's logits against PyTorch's on ``cases``, by edgeexport's criterion with ``tolerance``."""
    import optimum.intel

    from edgeexport.validation.metrics import compare_output

    model = getattr(optimum.intel, optimum_class).from_pretrained(folder)
    results = [compare_output("logits", model(**inputs)["logits"], reference.run(inputs)["logits"],
                              tolerance.for_output("logits"), logits=True) for inputs in cases]
    return {"passed": all(results), "max_error": max(r.max_error for r in results),
            "rms_error": max(r.rms_error for r in results), "failures": [r.reason for r in results if not r]}


def bench_latency(name: str, folder: Path, work: Path, *, iterations: int, rounds: int, threads: int) -> dict:
    """Every edgeexport precision and both optimum variants of ``name``, timed side by side."""
    from edgeexport.exporter import get_exporter
    from edgeexport.reference import load_reference
    from edgeexport.validation.latency import isolated, speedup, time_artifact
    from edgeexport.validation.parity import check_parity

    _, _, _, task, optimum_class = MODELS[name]
    reference = load_reference(folder, task=task)
    inputs = reference.make_inputs(SIZES[name], seed=0)
    per_round = max(1, iterations // rounds)
    rows: dict[str, dict[str, Any]] = {"pytorch eager": {"tool": "pytorch"}}
    timers: dict[str, Callable[[], Any]] = {"pytorch eager": lambda: isolated(
        _time_eager, str(folder), task, inputs, 3, per_round, threads)}
    for target in ("openvino", "onnx"):
        for precision, tolerance in get_exporter(target).precisions.items():
            label, out = f"edgeexport {target} {precision}", work / f"{name}-{target}-{precision}"
            export = export_edgeexport(folder, task, target, precision, out)
            report = check_parity(out, reference)
            rows[label] = {"tool": "edgeexport", "target": target, "precision": precision, "export": export,
                           "parity": {"passed": report.passed, "failures": report.failures()[:3]}}
            options = {"threads": threads, **({"performance_hint": "latency"} if target == "openvino" else {})}
            timers[label] = lambda out=out, label=label, options=options: isolated(
                time_artifact, str(out), label, inputs, 3, per_round, options)
    bounds = get_exporter("openvino").precisions
    for label, options in OPTIMUM_VARIANTS.items():
        out = work / f"{name}-{label.replace(' ', '-')}"
        export = export_optimum(folder, optimum_class, options, out)
        tolerance = (bounds.get("bf16") or bounds["fp16"]) if not options else bounds["int8-weights"]
        parity = optimum_parity(out, optimum_class, reference, tolerance or reference.tolerance,
                                [inputs, reference.make_inputs(SIZES[name], seed=1)])
        rows[label] = {"tool": "optimum-intel", "export": export, "parity": parity}
        timers[label] = lambda out=out, label=label: isolated(_time_optimum, str(out), optimum_class, label, inputs, 3,
                                                              per_round, threads)
    stats: dict[str, Any] = {}
    for _ in range(rounds):
        for label, timer in timers.items():
            measured = timer()
            stats[label] = measured if label not in stats else stats[label].merged(measured)
    eager = stats["pytorch eager"]
    for label, row in rows.items():
        row.update(stats[label].to_dict(), speedup_vs_eager=speedup(eager, stats[label]).value)
    passing = [label for label, row in rows.items() if row["tool"] == "edgeexport" and row["parity"]["passed"]]
    best = min(passing, key=lambda label: rows[label]["p50_ms"]) if passing else None
    default = rows["optimum-intel default"]
    return {"model": name, "shape": SIZES[name], "rows": rows, "best_at_parity": best,
            "best_vs_optimum_default": default["p50_ms"] / rows[best]["p50_ms"] if best else None}


def bench_generation(folder: Path, work: Path, *, threads: int, repeats: int, prompt_tokens: int = 16,
                     new_tokens: int = 32) -> dict:
    """Greedy generation tokens/s: PyTorch, edgeexport's loop on its artifacts, optimum-intel, interleaved."""
    import numpy as np
    import optimum.intel
    import torch

    from edgeexport.exporter import get_exporter
    from edgeexport.generator import Generator
    from edgeexport.reference import load_reference
    from edgeexport.validation.parity import check_parity

    torch.set_num_threads(threads)
    reference = load_reference(folder, task="causal-lm-with-past")
    model = __import__("transformers").GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, prompt_tokens))
    prompt = torch.from_numpy(ids)

    def hf_generate(m: Any) -> list[int]:
        out = m.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=model.config.eos_token_id)
        return out[0, prompt_tokens:].tolist()

    calls: dict[str, Callable[[], list[int]]] = {"pytorch eager generate()": lambda: hf_generate(model)}
    export: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    for entry in GENERATION_PRECISIONS:
        target, precision = entry.split(":")
        if precision not in get_exporter(target).precisions:
            continue
        label, out = f"edgeexport {target} {precision}", work / f"gpt2-{target}-{precision}"
        export[label] = export_edgeexport(folder, "causal-lm-with-past", target, precision, out)
        report = check_parity(out, reference)  # every step case of the decoder against its precision's bounds
        parity[label] = {"passed": report.passed, "failures": report.failures()[:3]}
        generator = Generator.load(out, threads=threads)
        calls[label] = lambda g=generator: g.generate(ids, max_new_tokens=new_tokens,
                                                      min_new_tokens=new_tokens).tokens[0].tolist()
    for label, options in OPTIMUM_VARIANTS.items():
        out = work / f"gpt2-{label.replace(' ', '-')}"
        export[label] = export_optimum(folder, "OVModelForCausalLM", options, out)
        optimum_model = optimum.intel.OVModelForCausalLM.from_pretrained(
            out, ov_config={"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        calls[label] = lambda m=optimum_model: hf_generate(m)
    times: dict[str, list[float]] = {label: [] for label in calls}
    tokens: dict[str, list[int]] = {}
    for repeat in range(repeats + 1):  # the first is an untimed warm-up
        for label, call in calls.items():
            start = time.perf_counter()
            tokens[label] = call()
            if repeat:
                times[label].append(new_tokens / (time.perf_counter() - start))
    expected = tokens["pytorch eager generate()"]
    base = statistics.median(times["pytorch eager generate()"])
    rows = {label: {"tokens_per_s": statistics.median(runs), "tokens_per_s_range": [min(runs), max(runs)],
                    "speedup_vs_eager": statistics.median(runs) / base,
                    "same_tokens": sum(a == b for a, b in zip(tokens[label], expected)),
                    **({"export": export[label]} if label in export else {}),
                    **({"parity": parity[label]} if label in parity else {})} for label, runs in times.items()}
    return {"model": "gpt2 124M, untied LM head", "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "distinct_tokens": len(set(expected)), "rows": rows}


def show(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeexport.validation.machine import describe_machine

    console = Console(width=170)
    versions = report["transformers"]
    console.print(f"measured on {describe_machine(report['machine'])}; {report['threads']} threads; exports with "
                  f"transformers {versions['edgeexport']} (edgeexport), {versions['optimum-intel']} (optimum-intel)")
    for model in report["latency"]:
        table = Table(title=f"{model['model']} {model['shape']}: p50 per call, {report['rounds']} rounds; best at "
                            f"parity: {model['best_at_parity']} ({model['best_vs_optimum_default'] or 0:.2f}x "
                            "optimum-intel's default)")
        for column in ("backend", "p50 ms", "p10-p90", "vs eager", "parity", "export s", "export peak RSS MB"):
            table.add_column(column)
        for label, row in model["rows"].items():
            parity = row.get("parity")
            export = row.get("export") or {}
            table.add_row(label, f"{row['p50_ms']:.2f}", f"{row['p10_ms']:.2f}-{row['p90_ms']:.2f}",
                          f"{row['speedup_vs_eager']:.2f}x" if row["speedup_vs_eager"] else "noisy",
                          "-" if parity is None else "PASS" if parity["passed"] else "FAIL",
                          f"{export['seconds']:.1f}" if export else "-", f"{export['peak_rss_mb']:.0f}" if export else "-")
        console.print(table)
    generation = report.get("generation")
    if generation:
        table = Table(title=f"GPT-2 greedy generation, {generation['new_tokens']} new tokens "
                            f"({generation['distinct_tokens']} distinct in PyTorch's)")
        for column in ("backend", "tokens/s (range)", "vs eager", "tokens = PyTorch's", "step parity", "export s",
                       "export peak RSS MB"):
            table.add_column(column)
        for label, row in generation["rows"].items():
            export, parity = row.get("export") or {}, row.get("parity")
            low, high = row["tokens_per_s_range"]
            table.add_row(label, f"{row['tokens_per_s']:.1f} ({low:.1f}-{high:.1f})", f"{row['speedup_vs_eager']:.2f}x",
                          f"{row['same_tokens']}/{generation['new_tokens']}",
                          "-" if parity is None else "PASS" if parity["passed"] else "FAIL",
                          f"{export['seconds']:.1f}" if export else "-", f"{export['peak_rss_mb']:.0f}" if export else "-")
        console.print(table)


def main() -> None:
    # Run as a script, this file's folder leads sys.path; keep it from shadowing installed packages.
    if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="generation runs per backend")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vs_optimum.json")
    args = parser.parse_args()
    ensure_venv()
    from edgeexport.validation.machine import machine_info

    report: dict[str, Any] = {"machine": machine_info(args.threads), "transformers": transformers_versions(),
                              "threads": args.threads, "rounds": args.rounds,
                              "latency": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            folder = save_model(name, work / "models")
            if name in SIZES:
                report["latency"].append(bench_latency(name, folder, work, iterations=args.iterations,
                                                       rounds=args.rounds, threads=args.threads))
            else:
                report["generation"] = bench_generation(folder, work, threads=args.threads, repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    show(report)


if __name__ == "__main__":
    main()
