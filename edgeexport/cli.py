"""The ``edgeexport`` command line (typer + rich). Commands map flags onto library calls of the same name.

Exit codes: 0 success, 1 parity failure, 2 usage error (bad model, task, target, input,
output folder or artifact), 130 interrupted.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeexport import interrupts
from edgeexport.errors import EdgeExportError
from edgeexport.reporting.gate import DEFAULT_LATENCY_MARGIN_PCT, DEFAULT_PARITY_MARGIN

if TYPE_CHECKING:
    from edgeexport.artifact import Manifest

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export PyTorch models to ONNX, OpenVINO, CoreML and TensorRT, and prove them right.")
# Wide tables when piped (CI logs), the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])
ReportPaths = Annotated[Optional[list[Path]], typer.Option(
    "--report", help="Write a report (repeatable); the suffix picks the format: .json (schema edgeexport.report.v1), "
                     ".xml (JUnit), .md (Markdown, e.g. a GitHub job summary), .html (one page with plots).")]
FailOn = Annotated[str, typer.Option(help="Exit 1 on 'any' parity failure or regression against --baseline, or "
                                          "only on a 'regression' against --baseline.")]
Baseline = Annotated[Optional[Path], typer.Option(help="JSON report of an earlier run (--report FILE.json) to "
                                                       "compare against.")]
ParityMargin = Annotated[float, typer.Option(help="An output regresses when its max abs error exceeds the "
                                                  "baseline's by more than this times its atol.")]
LatencyMargin = Annotated[float, typer.Option(help="A backend regresses when its p50 latency is more than this "
                                                   "percentage slower than the baseline's.")]


def _one_line_errors(command: F) -> F:
    """Turn deliberate errors into one ``error:`` line and their exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with interrupts.recorded():
                result = command(*args, **kwargs)
                if interrupts.requested():  # its KeyboardInterrupt was swallowed (a __del__), the work went on
                    raise KeyboardInterrupt("Ctrl-C came as the command finished; its output above is complete")
                return result
        except EdgeExportError as exc:
            errors.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            errors.print(Text.assemble(("interrupted", "red"), f": {str(exc) or 'nothing was written'}"), highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


Atol = Annotated[Optional[float], typer.Option(help="Parity bound: absolute error floor (docs/parity.md).")]
MaxError = Annotated[Optional[float], typer.Option(help="Parity bound: largest error, in spreads of the reference.")]
RmsError = Annotated[Optional[float], typer.Option(help="Parity bound: RMS error, in spreads of the reference.")]
ScaleError = Annotated[Optional[float], typer.Option(help="Parity bound: |slope - 1| of target against reference.")]
MinTop1 = Annotated[Optional[float], typer.Option(help="Parity bound: least top-1 agreement of logits (near-ties "
                                                       "count as agreeing).")]


def _bounds(atol: float | None, max_error: float | None, rms_error: float | None, scale_error: float | None,
            min_top1: float | None) -> dict[str, float]:
    """The tolerance bounds given on the command line, by manifest key."""
    given = {"atol": atol, "max_error": max_error, "rms_error": rms_error, "scale_error": scale_error,
             "min_top1": min_top1}
    return {key: value for key, value in given.items() if value is not None}


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


Shapes = Annotated[Optional[list[str]], typer.Option(
    "--shapes", help="TensorRT profile of a dynamic axis, AXIS:MIN,OPT,MAX, e.g. batch:1,4,16 (repeatable); "
                     "defaults to 1, the example size and 4x it.")]
Workspace = Annotated[Optional[str], typer.Option(help="TensorRT builder workspace limit, e.g. 4GiB (default: "
                                                       "TensorRT's, the GPU's memory).")]


@app.command("list")
@_one_line_errors
def list_command() -> None:
    """List the zoo's models, tasks and presets, and the targets with their install state."""
    from edgeexport.exporters import get_exporter, targets
    from edgeexport.reference.specs import PRESETS, SPECS
    from edgeexport.reference.tasks import supported_tasks
    from edgeexport.runtimes import runtime_module

    models = Table(title="models")
    for column in ("model", "tasks (default first)", "presets"):
        models.add_column(column)
    for name, spec in SPECS.items():
        models.add_row(name, ", ".join(supported_tasks(spec.tasks)), ", ".join(PRESETS))
    console.print(models)
    table = Table(title="targets")
    for column in ("target", "runtime", "precisions", "converts here", "runs here"):
        table.add_column(column)
    for target in targets():
        exporter = get_exporter(target)
        missing = [m for m in exporter.requires if importlib.util.find_spec(m) is None]
        converts = Text("yes", "green") if not missing else Text.assemble(("no", "yellow"),
                                                                          f" (pip install 'edgeexport[{target}]')")
        runs = runtime_module(exporter.runtime).RUNNER.runs_here()
        table.add_row(target, exporter.runtime, ", ".join(exporter.precisions), converts,
                      Text(runs, "green" if runs == "yes" else "yellow"))
    console.print(table)


@app.command()
@_one_line_errors
def convert(
    model: Annotated[str, typer.Argument(help="Zoo name (edgeexport list), save_pretrained folder, or hub id org/name.")],
    target: Annotated[str, typer.Option(help="Target format.")] = "onnx",
    task: Annotated[Optional[str], typer.Option(help="Task; defaults to the model's first task.")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size), zoo models only.")] = "tiny",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Artifact folder.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="Precision of the exported model; defaults to the target's (fp32; coreml: fp16).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset.")] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Check parity after export.")] = True,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    atol: Atol = None,
    max_error: MaxError = None,
    rms_error: RmsError = None,
    scale_error: ScaleError = None,
    min_top1: MinTop1 = None,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify the graph (onnxslim).")] = True,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled .bin weights (they can run code).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the parity report as JSON.")] = False,
    shapes: Shapes = None,
    workspace: Workspace = None,
    deployment_target: Annotated[Optional[str], typer.Option(
        help="Core ML minimum deployment target: iOS16 (= macOS13, the default), iOS17 or iOS18.")] = None,
) -> None:
    """Convert MODEL to an artifact folder for TARGET and check its parity against PyTorch."""
    from edgeexport.pipeline import convert as run_convert

    with console.status("starting", spinner="dots") as status:
        result = run_convert(model, target=target, task=task, preset=preset, output_dir=output, precision=precision,
                             opset=opset, validate=validate, force=force, simplify=simplify,
                             tolerance=_bounds(atol, max_error, rms_error, scale_error, min_top1),
                             allow_pickle=allow_pickle, target_options={"shapes": shapes, "workspace": workspace,
                                             "deployment_target": deployment_target},
                             progress=lambda message: status.update(message))
    exporter = result.manifest.exporter
    errors.print(f"wrote {result.artifact} ({target}, {result.manifest.precision}, exporter {exporter.get('name')}"
                 f"/{exporter.get('strategy')})", highlight=False, markup=False)
    if exporter.get("fallback_reason"):
        errors.print(Text.assemble(("note:", "yellow"), f" first strategy failed: {exporter['fallback_reason']}"),
                     highlight=False)
    if exporter.get("note"):
        errors.print(Text.assemble(("note:", "yellow"), f" {exporter['note']}"), highlight=False)
    if result.report is not None:
        _show_parity(result.report, json_output)
        _exit_on("parity", result.report.failures())


def _show_parity(report: Any, json_output: bool, localization: Any = None) -> None:
    from edgeexport.validation.report import parity_table

    if json_output:
        _print_json({**report.to_dict(), **({"localization": localization.to_dict()} if localization else {})})
    else:
        console.print(parity_table(report))
    if localization is not None:
        errors.print(Text.assemble(("explain", "cyan"), ": " + localization.describe()), highlight=False)


def _exit_on(what: str, failures: list[str]) -> None:
    """Print ``<what> FAILED: ...`` and exit 1 when there are failures."""
    if failures:
        errors.print(Text.assemble((f"{what} FAILED", "red"), ": " + "; ".join(failures)), highlight=False)
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def validate(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also re-run PyTorch on fresh inputs (needs torch).")] = False,
    atol: Atol = None,
    max_error: MaxError = None,
    rms_error: RmsError = None,
    scale_error: ScaleError = None,
    min_top1: MinTop1 = None,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
    explain: Annotated[bool, typer.Option(help="Name the first diverging op and its PyTorch module (ONNX, needs "
                                               "torch); runs by itself when parity fails and torch is here.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    report_paths: ReportPaths = None,
    fail_on: FailOn = "any",
    baseline: Baseline = None,
    parity_margin: ParityMargin = DEFAULT_PARITY_MARGIN,
    latency_margin: LatencyMargin = DEFAULT_LATENCY_MARGIN_PCT,
) -> None:
    """Check ARTIFACT (or each component of a bundle) against its golden cases (no torch needed); exit 1 on failure."""
    from edgeexport.bundle import component_folders
    from edgeexport.pipeline import check_parity, rebuild_reference
    from edgeexport.reporting import Gate, RunReport, check_report_paths, write_reports
    from edgeexport.runtimes import open_artifact

    paths = check_report_paths(report_paths or [])
    gate = Gate.create(fail_on, baseline, parity_margin=parity_margin, latency_margin_pct=latency_margin)
    opened = open_artifact(next(iter(component_folders(artifact).values())))
    overrides = _bounds(atol, max_error, rms_error, scale_error, min_top1)
    tolerance = opened.manifest.tolerance.overridden(**overrides) if overrides else None
    ref = rebuild_reference(opened.manifest) if reference else None
    report = check_parity(artifact, ref, tolerance=tolerance, threads=threads)
    localization = None
    if explain or not report.passed:
        localization = _localize(artifact, opened.manifest, ref, report, requested=explain)
    run = RunReport.create("validate", artifact, opened.manifest, gate=gate, parity=report, localization=localization)
    write_reports(run, paths)
    _show_parity(report, json_output, localization)
    _exit_on("parity", run.failures)


def _localize(artifact: Path, manifest: Any, reference: Any, report: Any, *, requested: bool) -> Any:
    """Localise the divergence of an ONNX artifact; without torch or for other targets only when asked."""
    from edgeexport.bundle import is_bundle
    from edgeexport.errors import UsageError
    from edgeexport.pipeline import explain, rebuild_reference

    problem = ("divergence localization works on ONNX artifacts" if manifest.target != "onnx" else
               "divergence localization needs torch installed" if importlib.util.find_spec("torch") is None else
               f"divergence localization works on one artifact; pass a component such as {artifact / 'decoder'}"
               if is_bundle(artifact) else "")
    if problem:
        if requested:
            raise UsageError(f"--explain: {problem}")
        return None
    return explain(artifact, reference or rebuild_reference(manifest), report)


@app.command()
@_one_line_errors
def bench(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also time PyTorch eager on the same inputs (needs torch).")] = False,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed samples, split over the rounds.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds of the backends, each in its own process.")] = 2,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the measurements as JSON.")] = False,
    report_paths: ReportPaths = None,
    fail_on: FailOn = "any",
    baseline: Baseline = None,
    parity_margin: ParityMargin = DEFAULT_PARITY_MARGIN,
    latency_margin: LatencyMargin = DEFAULT_LATENCY_MARGIN_PCT,
) -> None:
    """Time ARTIFACT on its golden inputs (p50/p90/p99, throughput, peak RSS); exit 1 on a regression."""
    from edgeexport.pipeline import bench as run_bench
    from edgeexport.pipeline import rebuild_reference
    from edgeexport.reporting import Gate, RunReport, check_report_paths, write_reports
    from edgeexport.runtimes import open_artifact
    from edgeexport.validation.machine import describe_machine
    from edgeexport.validation.report import latency_table

    paths = check_report_paths(report_paths or [])
    gate = Gate.create(fail_on, baseline, parity_margin=parity_margin, latency_margin_pct=latency_margin)
    manifest = open_artifact(artifact, verify=False).manifest  # run_bench verifies before running
    ref = rebuild_reference(manifest) if reference else None
    stats = run_bench(artifact, reference=ref, warmup=warmup, iterations=iterations, rounds=rounds, threads=threads)
    run = RunReport.create("bench", artifact, manifest, gate=gate, latency=stats)
    write_reports(run, paths)
    if json_output:
        _print_json([s.to_dict() for s in stats])
    else:
        console.print(latency_table(stats))
        errors.print(f"measured on {describe_machine(run.machine)}", highlight=False, markup=False)
    _exit_on("latency", run.failures)


@app.command()
@_one_line_errors
def matrix(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Zoo models, name or name:task, repeatable or comma-separated (default: all, default task).")] = None,
    targets: Annotated[Optional[list[str]], typer.Option(
        "--targets", help="Targets, repeatable or comma-separated (default: every installed one).")] = None,
    precisions: Annotated[Optional[list[str]], typer.Option(
        "--precisions", help="Precisions, repeatable or comma-separated (default: fp32).")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size).")] = "tiny",
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder of results/ and the matrix files.")] = Path("matrix"),
    jobs: Annotated[int, typer.Option(min=1, help="Combinations run in parallel processes.")] = 1,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any combination fails or errors.")] = False,
) -> None:
    """Convert and validate every model x target x precision; resumable, writes matrix.json/.md/.html to OUTPUT."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeexport.matrix import console_view, plan, run_matrix

    combinations = plan(models, targets, precisions or ["fp32"], preset)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=errors) as bar:
        task = bar.add_task("matrix", total=len(combinations))
        result = run_matrix(output, combinations, jobs=jobs, progress=lambda done, total, message: bar.update(
            task, completed=done, total=total, description=message))
    console.print(console_view(result))
    errors.print(f"wrote {output / 'matrix.md'}, matrix.html and matrix.json", highlight=False, markup=False)
    _exit_on("matrix", [c.combination.key for c in result.cells if c.status != "passed"] if strict else [])


@app.command()
@_one_line_errors
def inspect(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    target: Annotated[Optional[str], typer.Option(help="Also preflight the ONNX graph for this target (tensorrt): "
                                                       "unsupported ops, attributes, dtypes and known pitfalls.")] = None,
    locate: Annotated[bool, typer.Option(help="With --target: name each problem's PyTorch module (needs torch; "
                                              "re-exports the model).")] = False,
) -> None:
    """Show ARTIFACT's manifest, op histogram, parameter count and size (of each component of a bundle)."""
    from edgeexport.bundle import Bundle, component_folders
    from edgeexport.trt.preflight import preflight_artifact

    folders = component_folders(artifact)
    described = {role: _describe(folder) for role, folder in folders.items()}
    checked = {role: preflight_artifact(folder, target=target, locate=locate)
               for role, folder in folders.items()} if target else {}
    if json_output:
        data = {role: {"manifest": m.to_dict(), "size_bytes": size, **details,
                       **({"preflight": checked[role].to_dict()} if role in checked else {})}
                for role, (m, details, size) in described.items()}
        _print_json(data[""] if "" in data else {"bundle": Bundle.open(artifact).to_dict(), "components": data})
        return
    for role, (manifest, details, size) in described.items():
        _print_artifact(f"{artifact}" + (f" ({role})" if role else ""), manifest, details, size)
        if role in checked:
            _print_preflight(checked[role])


def _print_preflight(report: Any) -> None:
    if not report.findings:
        console.print(f"{report.summary()} (table: {report.source})", highlight=False)
        return
    table = Table(title=f"{report.summary()} (table: {report.source})")
    for column in ("severity", "node", "op", "module", "problem"):
        table.add_column(column)
    for f in report.findings:
        table.add_row(Text(f.severity, "red" if f.severity == "error" else "yellow"), f.node or "-", f.op_type or "-",
                      f.module or "-", f.message)
    console.print(table)


def _describe(folder: Path) -> tuple[Manifest, dict[str, Any], int]:
    from edgeexport.runtimes import open_artifact, runtime_module

    opened = open_artifact(folder)
    module = runtime_module(opened.manifest.runtime)
    details = module.describe(opened) if hasattr(module, "describe") else {}
    return opened.manifest, details, sum(opened.file(f).stat().st_size for f in opened.manifest.files)


def _print_artifact(title: str, manifest: Manifest, details: dict[str, Any], size: int) -> None:
    info = Table(title=title, show_header=False)
    info.add_column("field")
    info.add_column("value")
    for field_name, value in (
        ("model", f"{manifest.model.get('name')} ({manifest.model.get('task')}, preset {manifest.model.get('preset')})"),
        ("source", str(manifest.model.get("source"))), ("target", f"{manifest.target} via {manifest.runtime}"),
        ("precision", manifest.precision),
        ("exporter", ", ".join(f"{k}={v}" for k, v in manifest.exporter.items() if v not in (None, [], ""))),
        ("inputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.inputs)),
        ("outputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.outputs)),
        ("tolerance", ", ".join(f"{k}={v:g}" for k, v in manifest.tolerance.to_dict().items() if k != "per_output")),
        ("golden cases", ", ".join(g.name for g in manifest.golden)),
        *((("generation", _generation_summary(manifest)),) if manifest.generation else ()),
        *((("processing", _processing_summary(manifest)),) if manifest.processing else ()),
        ("parameters", f"{details.get('parameters', 0):,}"), ("size", f"{size / 1e6:.2f} MB"),
        ("created", manifest.created_at),
    ):
        info.add_row(field_name, value)
    console.print(info)
    if details.get("ops"):
        ops = Table(title=f"ops ({details.get('nodes')} nodes)")
        ops.add_column("op")
        ops.add_column("count", justify="right")
        for op, count in details["ops"].items():
            ops.add_row(op, str(count))
        console.print(ops)


def _processing_summary(manifest: Manifest) -> str:
    from edgeexport.processing import Processing

    return Processing.of(manifest).summary()


def _generation_summary(manifest: Manifest) -> str:
    from edgeexport.generation import GenerationSpec

    spec = GenerationSpec.of(manifest)
    cache = f"{len(spec.past) // 2} layers (past_key_values.{{i}}.key|value -> present.{{i}}.key|value)" if spec.past else ""
    cross = f"{len(spec.cross) // 2} layers of encoder_key_values.{{i}}.key|value" if spec.cross else ""
    tokens = ", ".join(f"{k}={v}" for k, v in spec.tokens.to_dict().items() if v not in (None, []))
    return "; ".join(part for part in (spec.role, cache, cross and f"cross {cross}", tokens,
                                       f"tokenizer {spec.tokenizer or 'none'}") if part)


@app.command()
@_one_line_errors
def build(
    artifact: Annotated[Path, typer.Argument(help="TensorRT artifact folder (from convert --target tensorrt).")],
    shapes: Shapes = None,
    workspace: Workspace = None,
) -> None:
    """Build ARTIFACT's TensorRT engine on this machine's GPU, atomically; the manifest records TensorRT and the GPU."""
    from edgeexport.trt.build import build_artifact

    with console.status("building the TensorRT engine", spinner="dots"):
        manifest = build_artifact(artifact, shapes=shapes, workspace=workspace)
    engine = manifest.runtime_options["engine"]
    errors.print(f"built {artifact / engine['file']} (TensorRT {engine['tensorrt']}, {engine['gpu']}, compute "
                 f"capability {engine['compute_capability']})", highlight=False, markup=False)


@app.command()
@_one_line_errors
def generate(
    artifact: Annotated[Path, typer.Argument(help="causal-lm-with-past artifact or seq2seq-lm-with-past bundle.")],
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text (needs a tokenizer in the artifact).")] = None,
    prompt_ids: Annotated[Optional[str], typer.Option(help="Prompt token ids, e.g. 1,2,3.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 32,
    do_sample: Annotated[bool, typer.Option("--do-sample/--greedy", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling probability mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sampler.")] = None,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
) -> None:
    """Generate from a prompt with ARTIFACT, streaming tokens to stdout, then tokens/s to stderr."""
    from edgeexport.runtimes.generate import Generator, TextStreamer

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with Generator.load(artifact, threads=threads) as generator:
        output = generator.generate(generator.prompt(prompt, prompt_ids), max_new_tokens=max_new_tokens,
                                    do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                    streamer=TextStreamer(generator, write))
    write("\n")
    errors.print(f"{output.tokens.size} tokens in {output.total_s:.2f} s: {output.tokens_per_s:.1f} tokens/s "
                 f"(first token {output.first_token_s * 1e3:.1f} ms)", highlight=False, markup=False)


@app.command()
@_one_line_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder of a task model (not a generation decoder).")],
    text: Annotated[Optional[str], typer.Option(help="Text to classify (needs a tokenizer in the artifact); "
                                                     "for question answering, the question.")] = None,
    text_pair: Annotated[Optional[str], typer.Option(help="Second text: the context of a question.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Image file (PNG, JPEG) for vision models (needs Pillow).")
                     ] = None,
    audio: Annotated[Optional[Path], typer.Option(help="16-bit PCM WAV file at the model's sampling rate.")] = None,
    inputs: Annotated[Optional[Path], typer.Option(help="Model inputs as an .npz of named arrays.")] = None,
    case: Annotated[str, typer.Option(help="Golden case whose inputs to use when no input is given.")] = "example",
    top_k: Annotated[int, typer.Option(min=1, help="Classes shown per row (classification tasks).")] = 5,
    threshold: Annotated[float, typer.Option(help="Lowest score of a kept detection (object detection).")] = 0.5,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the decoded results as JSON.")] = False,
) -> None:
    """Run ARTIFACT on text, an image, audio or arrays (default: its golden inputs) and print what the outputs
    mean: labels, answer spans, boxes, maps or transcripts. Needs no torch."""
    from edgeexport.processing import Processing, decode, describe

    sources = {"--text": text, "--image": image, "--audio": audio, "--inputs": inputs}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        from edgeexport.errors import UsageError
        raise UsageError(f"{', '.join(given)} were given together; pass one input")
    from edgeexport.runtimes import load

    with load(artifact, threads=threads) as runner:
        task, processing = runner.artifact.manifest.model.get("task", ""), Processing.of(runner.artifact.manifest)
        feed, encoded = _predict_inputs(runner, processing, text=text, text_pair=text_pair, image=image, audio=audio,
                                        inputs=inputs, case=case)
        results = decode(task, runner(feed), processing, top_k=top_k, threshold=threshold, text=encoded)
    if json_output:
        _print_json(results)
        return
    for row, result in enumerate(results):
        console.print(f"[{row}] {describe(task, result, processing)}", highlight=False, markup=False)


def _predict_inputs(runner: Any, processing: Any, *, text: str | None, text_pair: str | None, image: Path | None,
                    audio: Path | None, inputs: Path | None, case: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The model inputs of ``predict`` (pre-processed text, image or audio, an .npz, or a golden case), and
    the text encoding when text was given."""
    from edgeexport import processing as tasks
    from edgeexport.artifact import load_npz
    from edgeexport.errors import InputSpecError

    if text is not None:  # the tokenizer gives every text input; the model takes some of them
        encoded = tasks.text_inputs(processing, runner.artifact, text, text_pair)
        return {name: encoded[name] for name in runner.artifact.manifest.input_names if name in encoded}, encoded
    if image is not None:
        return tasks.image_inputs(processing, image), None
    if audio is not None:
        return tasks.audio_inputs(processing, audio), None
    if inputs is not None:
        try:
            return load_npz(inputs), None
        except (OSError, ValueError) as exc:
            raise InputSpecError(f"--inputs {str(inputs)!r} is not a readable .npz of arrays ({exc}); write it with "
                                 "numpy.savez") from None
    golden = {g.name: g for g in runner.artifact.manifest.golden}
    if case not in golden:
        raise InputSpecError(f"the artifact has no golden case {case!r}; choose one of: {', '.join(golden)}")
    return runner.artifact.load_golden(golden[case])[0], None


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
