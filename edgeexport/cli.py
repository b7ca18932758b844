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
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgeexport.errors import EdgeExportError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export PyTorch models to ONNX, OpenVINO, CoreML and TensorRT, and prove them right.")
# Wide tables when piped (CI logs), the terminal's width otherwise.
console = Console(width=None if sys.stdout.isatty() else 200)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(command: F) -> F:
    """Turn deliberate errors into one ``error:`` line and their exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EdgeExportError as exc:
            errors.print(Text.assemble(("error:", "red"), f" {exc}"), highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            errors.print(Text.assemble(("interrupted", "red"), ": nothing was written"), highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command("list")
@_one_line_errors
def list_command() -> None:
    """List the zoo's models, tasks and presets, and the targets with their install state."""
    from edgeexport.exporters import get_exporter, targets
    from edgeexport.reference.specs import PRESETS, SPECS

    models = Table(title="models")
    for column in ("model", "tasks (default first)", "presets"):
        models.add_column(column)
    for name, spec in SPECS.items():
        models.add_row(name, ", ".join(spec.tasks), ", ".join(PRESETS))
    console.print(models)
    table = Table(title="targets")
    for column in ("target", "runtime", "precisions", "installed"):
        table.add_column(column)
    for target in targets():
        exporter = get_exporter(target)
        missing = [m for m in exporter.requires if importlib.util.find_spec(m) is None]
        state = Text("yes", "green") if not missing else Text.assemble(("no", "yellow"),
                                                                       f" (pip install 'edgeexport[{target}]')")
        table.add_row(target, exporter.runtime, ", ".join(exporter.precisions), state)
    console.print(table)


@app.command()
@_one_line_errors
def convert(
    model: Annotated[str, typer.Argument(help="Zoo name (edgeexport list), save_pretrained folder, or hub id org/name.")],
    target: Annotated[str, typer.Option(help="Target format.")] = "onnx",
    task: Annotated[Optional[str], typer.Option(help="Task; defaults to the model's first task.")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size), zoo models only.")] = "tiny",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Artifact folder.")] = None,
    precision: Annotated[str, typer.Option(help="Precision of the exported model.")] = "fp32",
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset.")] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Check parity after export.")] = True,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance stored in the manifest.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance stored in the manifest.")] = None,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify the graph (onnxslim).")] = True,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled .bin weights (they can run code).")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the parity report as JSON.")] = False,
) -> None:
    """Convert MODEL to an artifact folder for TARGET and check its parity against PyTorch."""
    from edgeexport.pipeline import convert as run_convert

    with console.status("starting", spinner="dots") as status:
        result = run_convert(model, target=target, task=task, preset=preset, output_dir=output, precision=precision,
                             opset=opset, validate=validate, force=force, atol=atol, rtol=rtol, simplify=simplify,
                             allow_pickle=allow_pickle, progress=lambda message: status.update(message))
    exporter = result.manifest.exporter
    errors.print(f"wrote {result.artifact} ({target}, {precision}, exporter {exporter.get('name')}"
                 f"/{exporter.get('strategy')})", highlight=False, markup=False)
    if exporter.get("fallback_reason"):
        errors.print(Text.assemble(("note:", "yellow"), f" first strategy failed: {exporter['fallback_reason']}"),
                     highlight=False)
    if result.report is not None:
        _show_parity(result.report, json_output)


def _show_parity(report: Any, json_output: bool) -> None:
    from edgeexport.validation.report import parity_table

    if json_output:
        _print_json(report.to_dict())
    else:
        console.print(parity_table(report))
    if not report.passed:
        errors.print(Text.assemble(("parity FAILED", "red"), ": " + "; ".join(report.failures())), highlight=False)
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def validate(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also re-run PyTorch on fresh inputs (needs torch).")] = False,
    atol: Annotated[Optional[float], typer.Option(help="Override the manifest's absolute tolerance.")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Override the manifest's relative tolerance.")] = None,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check ARTIFACT against its golden bundle (no torch needed); exit 1 on parity failure."""
    from edgeexport.artifact import Tolerance
    from edgeexport.pipeline import check_parity, rebuild_reference
    from edgeexport.runtimes import open_artifact

    opened = open_artifact(artifact)
    tolerance = None
    if atol is not None or rtol is not None:
        stored = opened.manifest.tolerance
        tolerance = Tolerance(atol if atol is not None else stored.atol, rtol if rtol is not None else stored.rtol)
    ref = rebuild_reference(opened.manifest) if reference else None
    _show_parity(check_parity(artifact, ref, tolerance=tolerance, threads=threads), json_output)


@app.command()
@_one_line_errors
def bench(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also time PyTorch eager on the same inputs (needs torch).")] = False,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed runs.")] = 20,
    threads: Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the measurements as JSON.")] = False,
) -> None:
    """Time ARTIFACT on its golden inputs (p50/p90/p99, throughput, peak RSS)."""
    from edgeexport.pipeline import bench as run_bench
    from edgeexport.pipeline import rebuild_reference
    from edgeexport.runtimes import open_artifact
    from edgeexport.validation.report import latency_table

    ref = rebuild_reference(open_artifact(artifact).manifest) if reference else None
    stats = run_bench(artifact, reference=ref, warmup=warmup, iterations=iterations, threads=threads)
    if json_output:
        _print_json([s.to_dict() for s in stats])
    else:
        console.print(latency_table(stats))


@app.command()
@_one_line_errors
def inspect(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show ARTIFACT's manifest, op histogram, parameter count and size."""
    from edgeexport.runtimes import open_artifact, runtime_module

    opened = open_artifact(artifact)
    manifest = opened.manifest
    module = runtime_module(manifest.runtime)
    details = module.describe(opened) if hasattr(module, "describe") else {}
    size = sum(opened.file(f).stat().st_size for f in manifest.files)
    if json_output:
        _print_json({"manifest": manifest.to_dict(), "size_bytes": size, **details})
        return
    info = Table(title=f"{artifact}", show_header=False)
    info.add_column("field")
    info.add_column("value")
    for field_name, value in (
        ("model", f"{manifest.model.get('name')} ({manifest.model.get('task')}, preset {manifest.model.get('preset')})"),
        ("source", str(manifest.model.get("source"))), ("target", f"{manifest.target} via {manifest.runtime}"),
        ("precision", manifest.precision),
        ("exporter", ", ".join(f"{k}={v}" for k, v in manifest.exporter.items() if v not in (None, [], ""))),
        ("inputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.inputs)),
        ("outputs", "; ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in manifest.outputs)),
        ("tolerance", f"atol={manifest.tolerance.atol:g} rtol={manifest.tolerance.rtol:g}"),
        ("golden cases", ", ".join(g.name for g in manifest.golden)),
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
