"""Measure each precision's parity errors, the data behind the bounds in docs/parity.md.

For every (model, preset, seed) x (target, precision) job, converts the model (no validation),
runs its golden cases and fresh inputs at every shape case, and records per output the errors
in spreads (max, RMS), the scale slope, top-1 agreement and the reference gap (in spreads) of
every top-1 flip. Each job is one JSON file under ``--out`` (resumable; a job runs in its own
process so memory is returned). ``--summary`` prints the worst value of each metric per target and
precision and writes ``summary.json``.

Models are the zoo (tiny and full presets) and holdout folders built here with random weights:
architectures outside the zoo (RoBERTa, DistilBERT, Swin, HuBERT, OPT), converted from a
``save_pretrained`` folder as a user would.

    python benchmarks/parity_errors.py --out benchmarks/results/parity --preset full --seeds 0 1
    python benchmarks/parity_errors.py --out benchmarks/results/parity --summary
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS = {
    "onnx": ("fp32", "fp16", "int8-weights"),
    "openvino": ("fp32", "fp16", "int8-weights", "int8"),
    "coreml": ("fp32", "fp16", "int8", "palettize6", "palettize4"),
}
ZOO = [("gpt2", "causal-lm"), ("gpt2", "causal-lm-with-past"), ("bert", "sequence-classification"),
       ("bert", "token-classification"), ("bert", "question-answering"), ("bart", "seq2seq-lm"), ("t5", "seq2seq-lm"),
       ("vit", "image-classification"), ("convnext", "image-classification"), ("detr", "object-detection"),
       ("mask2former", "segmentation"), ("glpn", "depth-estimation"), ("wav2vec2", "ctc"),
       ("wav2vec2", "audio-classification")]
# Holdout architectures (class, config overrides at a published size), saved as folders with random weights.
HOLDOUTS = {
    "roberta": ("RobertaForSequenceClassification", "RobertaConfig", {"num_labels": 3}),  # roberta-base
    "distilbert": ("DistilBertForQuestionAnswering", "DistilBertConfig", {}),  # distilbert-base
    "swin": ("SwinForImageClassification", "SwinConfig", {"num_labels": 10}),  # swin-tiny
    "hubert": ("HubertForCTC", "HubertConfig", {"vocab_size": 32}),  # hubert-base
    "opt": ("OPTForCausalLM", "OPTConfig", {"hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12,
                                            "num_attention_heads": 12, "word_embed_proj_dim": 768}),  # opt-125m
}
TINY_HOLDOUT = {"roberta": {"hidden_size": 36, "num_hidden_layers": 3, "num_attention_heads": 2,
                            "intermediate_size": 64, "vocab_size": 1000, "max_position_embeddings": 66},
                "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": 1000},
                "swin": {"image_size": 64, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
                "hubert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 64, "conv_dim": [16, 16], "conv_stride": [5, 2], "conv_kernel": [10, 3],
                           "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2},
                "opt": {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "word_embed_proj_dim": 32, "vocab_size": 1000}}
LOOSE = {"atol": 1e9, "rounding": 0.0, "max_error": 1e9, "rms_error": 1e9, "scale_error": 1e9}


def holdout_folder(name: str, preset: str, seed: int, cache: Path) -> Path:
    """A save_pretrained folder of a holdout architecture with seeded random weights."""
    import torch
    import transformers

    folder = cache / f"{name}-{preset}-{seed}"
    if (folder / "config.json").is_file():
        return folder
    model_class, config_class, overrides = HOLDOUTS[name]
    config = getattr(transformers, config_class)(**overrides, **(TINY_HOLDOUT[name] if preset == "tiny" else {}))
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).eval()
    model.save_pretrained(folder)
    return folder


def run_job(job: dict[str, Any], out: Path, cache: Path) -> None:
    """Convert, run every case, and write the job's measurements to ``out``."""
    from edgeexport.artifact import Artifact
    from edgeexport.pipeline import FRESH_SEED, convert
    from edgeexport.runner import load

    started = time.perf_counter()
    model: Any = job["model"]
    if job["kind"] == "holdout":
        model = holdout_folder(job["model"], job["preset"], job["seed"], cache)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        result = convert(model, task=job["task"], target=job["target"], precision=job["precision"],
                         preset=job["preset"], seed=job["seed"] if job["kind"] == "zoo" else 0,
                         output_dir=Path(folder) / "artifact", validate=False, tolerance=LOOSE)
        reference = result.reference
        outputs: list[dict[str, Any]] = []
        components = getattr(reference, "components", {"": reference})
        for role, component in components.items():
            path = result.artifact / role
            artifact = Artifact.open(path)
            with load(path) as runner:
                cases = [(g.name, *artifact.load_golden(g)) for g in artifact.manifest.golden]
                for i, (name, sizes) in enumerate(component.shape_cases()):
                    inputs = component.make_inputs(sizes, seed=FRESH_SEED + i)
                    cases.append((f"fresh-{name}", inputs, component.run(inputs)))
                for case, inputs, expected in cases:
                    got = runner(inputs)
                    for output, want in expected.items():
                        outputs.append({"component": role, "case": case, "output": output,
                                        **measure(got[output], want, output in artifact.manifest.logits_outputs)})
    record = {**job, "seconds": round(time.perf_counter() - started, 1), "outputs": outputs,
              "machine": platform.processor() or platform.machine()}
    _write(out, record)


def measure(target: np.ndarray, reference: np.ndarray, logits: bool) -> dict[str, Any]:
    """The metrics of docs/parity.md (with unbounded bounds) plus the flip gaps of logits, in spreads."""
    from edgeexport.artifact import Bounds
    from edgeexport.validation.metrics import compare_output

    result = compare_output("y", target, reference, Bounds(**LOOSE), logits=logits)
    data = {"max_error": result.max_error, "rms_error": result.rms_error, "scale": result.scale,
            "spread": result.spread, "magnitude": result.magnitude, "max_abs": result.max_abs,
            "size": int(reference.size), "top1": result.top1}
    if logits and reference.ndim >= 1 and reference.shape[-1] > 1:
        want = reference.astype(np.float64).reshape(-1, reference.shape[-1])
        got = target.astype(np.float64).reshape(-1, reference.shape[-1])
        rows = np.arange(len(want))
        ours, theirs = got.argmax(1), want.argmax(1)
        flipped = ours != theirs
        data["flip_gaps"] = ((want[rows, theirs] - want[rows, ours])[flipped] / result.spread).tolist()
        data["rows"] = int(len(want))
    return data


def _write(out: Path, record: dict[str, Any]) -> None:
    path = out / f"{key(record)}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def key(job: dict[str, Any]) -> str:
    return f"{job['kind']}-{job['model']}-{job['task']}-{job['preset']}-s{job['seed']}-{job['target']}-{job['precision']}"


def jobs(preset: str, seeds: list[int], targets: list[str], kinds: list[str]) -> list[dict[str, Any]]:
    """Jobs in order of importance: by seed, then target and precision (fp32 first); zoo before holdouts."""
    from edgeexport.tasks import task_from_architecture

    models = [{"kind": "zoo", "model": m, "task": t} for m, t in ZOO] if "zoo" in kinds else []
    if "holdout" in kinds:
        models += [{"kind": "holdout", "model": m,
                    "task": task_from_architecture(cls, "input_values" if m == "hubert" else "input_ids")}
                   for m, (cls, _, _) in HOLDOUTS.items()]
    return [{**model, "preset": preset, "seed": seed, "target": target, "precision": precision}
            for seed in seeds for target in targets for precision in PRECISIONS[target] for model in models]


GROUP = ("kind", "model", "task", "preset", "seed")  # jobs of one group share a process and the ONNX capture


def _child(group_jobs: list[dict[str, Any]], out: Path, cache: Path) -> None:
    """Run a model's jobs in one process, capturing its ONNX graph once for every ONNX precision."""
    from edgeexport.exporters import onnx as onnx_target

    capture = onnx_target.capture

    memo: dict[Any, Any] = {}

    def memoized(reference: Any, *, opset: int | None) -> Any:
        graph = (tuple(reference.input_names), tuple(reference.output_names), opset)  # a bundle has two graphs
        if graph not in memo:
            model, info = capture(reference, opset=opset)
            memo[graph] = (model.SerializeToString(), info)
        data, info = memo[graph]
        import onnx

        return onnx.load_from_string(data), dict(info)

    onnx_target.capture = memoized
    for job in group_jobs:
        print(f"    {key(job)}", flush=True)
        try:
            run_job(job, out, cache)
        except Exception as exc:  # noqa: BLE001 - a failing job is recorded, the sweep goes on
            _write(out, {**job, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                         "traceback": traceback.format_exc()[-2000:]})


def summary(out: Path) -> dict[str, Any]:
    """Worst metrics per target and precision (and per preset), over every output of every job."""
    table: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("*.json")):
        if path.name == "summary.json":
            continue
        record = json.loads(path.read_text())
        row = table.setdefault(f"{record['target']} {record['precision']} {record['preset']}", {
            "jobs": 0, "errors": [], "max_error": 0.0, "rms_error": 0.0, "scale_dev": 0.0, "min_top1": 1.0,
            "max_flip_gap": 0.0, "worst": {}})
        row["jobs"] += 1
        if "error" in record:
            row["errors"].append(f"{key(record)}: {record['error']}")
            continue
        for o in record["outputs"]:
            where = f"{record['model']}/{record['task']}/s{record['seed']}/{o['component'] or '-'}/{o['case']}/{o['output']}"
            for metric, value in (("max_error", o["max_error"]), ("rms_error", o["rms_error"]),
                                  ("scale_dev", abs(o["scale"] - 1) if o["scale"] is not None else 0.0)):
                if value is not None and np.isfinite(value) and value > row[metric]:
                    row[metric], row["worst"][metric] = value, where
            if o.get("top1") is not None and o["top1"] < row["min_top1"]:
                row["min_top1"], row["worst"]["min_top1"] = o["top1"], where
            gaps = o.get("flip_gaps") or []
            if gaps and max(gaps) > row["max_flip_gap"]:
                row["max_flip_gap"], row["worst"]["max_flip_gap"] = max(gaps), where
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    for name, row in sorted(table.items()):
        print(f"{name:34s} jobs {row['jobs']:3d} max {row['max_error']:.3g} rms {row['rms_error']:.3g} "
              f"|scale-1| {row['scale_dev']:.3g} top1>= {row['min_top1']:.3f} flip gap<= {row['max_flip_gap']:.3g} "
              f"errors {len(row['errors'])}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parity"))
    parser.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--targets", nargs="+", default=["onnx", "openvino"], choices=sorted(PRECISIONS))
    parser.add_argument("--kinds", nargs="+", default=["zoo", "holdout"], choices=("zoo", "holdout"))
    parser.add_argument("--only", nargs="*", default=[], help="Run only jobs whose key contains one of these.")
    parser.add_argument("--summary", action="store_true", help="Summarise the results in --out and exit.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summary:
        summary(args.out)
        return
    cache = args.out / "cache"
    cache.mkdir(exist_ok=True)
    todo = [j for j in jobs(args.preset, args.seeds, args.targets, args.kinds)
            if not (args.out / f"{key(j)}.json").exists() and (not args.only or any(o in key(j) for o in args.only))]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for job in todo:
        groups.setdefault(tuple(job[k] for k in GROUP), []).append(job)
    context = multiprocessing.get_context("spawn")
    for index, (group, group_jobs) in enumerate(groups.items(), 1):
        print(f"[{index}/{len(groups)}] {' '.join(map(str, group))}: {len(group_jobs)} jobs", flush=True)
        process = context.Process(target=_child, args=(group_jobs, args.out, cache))
        process.start()
        process.join()
    shutil.rmtree(cache / "tmp", ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
