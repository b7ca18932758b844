"""The ``edgeexport`` command line (typer + rich). Each command parses its flags, calls one library
function with keyword arguments of the same names, and prints what it returns.

The decisions live in the library (:mod:`edgeexport.conversion`, :mod:`edgeexport.pipeline`,
:mod:`edgeexport.inspection`, :mod:`edgeexport.generator`), so Python callers get them too.
Target-specific flags of ``convert`` come from the targets' own declarations
(:attr:`edgeexport.exporter.Exporter.options`).

The parser's and the commands' conventions (click's metavars, one ``error:`` line per mistake) and
the flag groups several commands share live in :mod:`edgeexport.cli_parts`. What the commands print
(tables, JSON, the parity verdict, exit 1 on failures) is :mod:`edgeexport.cli_output`.

Exit codes: 0 success; 1 parity failure or regression, a preflight error (``inspect --preflight``),
or a matrix combination that erred; 2 usage error (bad model, task, target, flag, input, output
folder or artifact, or a missing backend extra); 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.text import Text

from edgeexport import __version__
from edgeexport.cli_output import (exit_on, print_inspection, print_json, say_written, show_conversion, show_parity,
                                   show_tuning, table)
from edgeexport.cli_parts import (App, add_flags, bound_flags, bounds, console, errors, gate, gate_flags,
                                  one_line_errors, option_flag, target_option_values)
from edgeexport.errors import UsageError
from edgeexport.exporter import get_exporter, preflight_targets, target_options, targets

app = App(version=f"edgeexport {__version__}", add_completion=False, no_args_is_help=True,
          pretty_exceptions_enable=False,
          help="Export PyTorch models to ONNX, OpenVINO, CoreML and TensorRT, and prove them right.")
Threads = Annotated[int, typer.Option(help="Runtime threads (0 = runtime default).")]
TARGETS = ", ".join(targets())


@app.command("list")
@one_line_errors
def list_command() -> None:
    """List the zoo's models, tasks and presets, and the targets with their install state."""
    from edgeexport.inspection import models, target_entries

    console.print(table("models (random weights; full is the size of the published checkpoint)",
                         ("model", "tasks (default first)", "presets", "published checkpoint"),
                         ((m.name, ", ".join(m.tasks), ", ".join(m.presets), m.checkpoint) for m in models())))
    console.print(table("targets", ("target", "runtime", "precisions", "converts here", "runs here"), (
        (t.target, t.runtime, ", ".join(t.precisions),
         Text("yes", "green") if t.converts_here else Text.assemble(("no", "yellow"), f" ({t.install})"),
         Text(t.runs_here, "green" if t.runs_here == "yes" else "yellow")) for t in target_entries())))


@app.command()
@one_line_errors
@add_flags(bound_flags(), bounds, replaces=("tolerance",))
@add_flags(map(option_flag, target_options().values()), target_option_values, replaces=("target_options",))
def convert(
    model: Annotated[str, typer.Argument(help="Zoo name (edgeexport list), save_pretrained folder, or hub id org/name.")],
    target: Annotated[str, typer.Option(help=f"Target format: {TARGETS}.")] = "onnx",
    task: Annotated[Optional[str], typer.Option(help="Task; defaults to the model's first task.")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size), zoo models only.")] = "tiny",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Artifact folder.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        help="Precision of the exported model; defaults to the target's (fp32; coreml: fp16). auto: try every "
             "precision and keep the fastest at parity on this machine (edgeexport tune).")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset.")] = None,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Check parity after export.")] = True,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify the graph (onnxslim).")] = True,
    allow_pickle: Annotated[bool, typer.Option(help="Allow pickled .bin weights (they can run code).")] = False,
    allow_random_head: Annotated[bool, typer.Option(
        "--allow-random-head", help="Convert a checkpoint that lacks the task's head (random; the manifest says so).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the parity report as JSON.")] = False,
    target_options: dict[str, Any] | None = None,
    tolerance: dict[str, float] | None = None,
) -> None:
    """Convert MODEL to an artifact folder for TARGET and check its parity against PyTorch."""
    from edgeexport.conversion import convert as run_convert
    from edgeexport.tuning import AUTO

    if precision == AUTO:
        _tune(model, target=target, task=task, preset=preset, output_dir=output, opset=opset, force=force,
              simplify=simplify, allow_pickle=allow_pickle, allow_random_head=allow_random_head, tolerance=tolerance,
              target_options=target_options, json_output=json_output)
        return
    with console.status("starting", spinner="dots") as status:
        result = run_convert(model, target=target, task=task, preset=preset, output_dir=output, precision=precision,
                             opset=opset, validate=validate, force=force, simplify=simplify,
                             tolerance=tolerance, allow_pickle=allow_pickle, allow_random_head=allow_random_head,
                             target_options=target_options,
                             progress=lambda message: status.update(message))
    show_conversion(result, json_output)


@app.command()
@one_line_errors
@add_flags(bound_flags(), bounds, replaces=("tolerance",))
@add_flags(map(option_flag, target_options().values()), target_option_values, replaces=("target_options",))
def tune(
    source: Annotated[str, typer.Argument(help="Zoo name, save_pretrained folder, hub id, or an artifact folder "
                                               "(tunes the model it was converted from).")],
    target: Annotated[Optional[str], typer.Option(help=f"Target format: {TARGETS} (default: onnx, or the "
                                                       "artifact's).")] = None,
    precisions: Annotated[Optional[list[str]], typer.Option(
        "--precisions", help="Candidates, repeatable or comma-separated (default: every precision of the target).")
    ] = None,
    task: Annotated[Optional[str], typer.Option(help="Task; defaults to the model's first task.")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size), zoo models only.")] = "tiny",
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder of the kept artifact.")] = None,
    iterations: Annotated[int, typer.Option(min=1, help="Timed samples of each candidate, split over the rounds.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds of the candidates, each in its own process.")
                      ] = 2,
    threads: Threads = 0,
    force: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the kept artifact's parity report as JSON.")
                           ] = False,
    target_options: dict[str, Any] | None = None,
    tolerance: dict[str, float] | None = None,
) -> None:
    """Convert SOURCE at every precision of TARGET, check each against its tolerance, time those that pass side by
    side on this machine and keep the fastest (the same as convert --precision auto); the manifest keeps the table."""
    from edgeexport.matrix import split_names

    _tune(source, target=target, task=task, preset=preset, output_dir=output, force=force, tolerance=tolerance,
          target_options=target_options, json_output=json_output, precisions=tuple(split_names(precisions or ())),
          iterations=iterations, rounds=rounds, threads=threads)


def _tune(source: str, *, json_output: bool, precisions: tuple[str, ...] = (), iterations: int = 20, rounds: int = 2,
          threads: int = 0, **convert_options: Any) -> None:
    from edgeexport.tuning import TuneOptions
    from edgeexport.tuning import tune as run_tune

    options = TuneOptions(precisions=precisions, iterations=iterations, rounds=rounds, threads=threads)
    with console.status("starting", spinner="dots") as status:
        result = run_tune(source, options=options, progress=lambda message: status.update(message), **convert_options)
    show_tuning(result.tuning.to_dict())
    show_conversion(result.conversion, json_output)


@app.command()
@one_line_errors
@add_flags(bound_flags(), bounds, replaces=("tolerance",))
@add_flags(gate_flags("parity"), gate, replaces=("gate", "reports"))
def validate(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also re-run PyTorch on fresh inputs (needs torch).")] = False,
    threads: Threads = 0,
    explain: Annotated[bool, typer.Option(help="Name the first diverging op and its PyTorch module (ONNX, needs "
                                               "torch); runs by itself when parity fails and torch is here.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    gate: Any = None,
    reports: Any = None,
    tolerance: dict[str, float] | None = None,
    verify: Annotated[Optional[Path], typer.Option(
        help="Signer's public key (PEM): refuse ARTIFACT unless it carries a valid signature by its private key "
             "(edgeexport sign), checked before anything else is read.")] = None,
) -> None:
    """Check ARTIFACT (or each component of a bundle) against its golden cases (no torch needed); exit 1 on failure."""
    from edgeexport.pipeline import validate as run_validate

    run = run_validate(artifact, reference=reference, tolerance=tolerance,
                       threads=threads, explain=explain, gate=gate, reports=reports, verify_key=verify)
    if verify is not None:
        errors.print(f"signature of {artifact} verified with {verify}", highlight=False, markup=False)
    show_parity(run.parity, json_output, run.localization)
    say_written(reports)
    exit_on("parity", run.failures, run.verdict())


@app.command()
@one_line_errors
def sign(
    artifact: Annotated[Path, typer.Argument(help="Artifact or bundle folder.")],
    key: Annotated[Path, typer.Option(help="Elliptic-curve private key (PEM), e.g. from 'openssl ecparam -name "
                                           "prime256v1 -genkey -noout -out key.pem'.")],
) -> None:
    """Sign ARTIFACT (every file, the manifest included) into ARTIFACT/model.sig; devices check it with validate --verify."""
    from edgeexport.signing import sign as sign_folder

    signature = sign_folder(artifact, key)
    errors.print(f"wrote {signature} (signed with {key})", highlight=False, markup=False)


@app.command()
@one_line_errors
@add_flags(gate_flags("latency"), gate, replaces=("gate", "reports"))
def bench(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    reference: Annotated[bool, typer.Option(help="Also time PyTorch eager on the same inputs (needs torch).")] = False,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed warm-up runs.")] = 3,
    iterations: Annotated[int, typer.Option(min=1, help="Timed samples, split over the rounds.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Alternating rounds of the backends, each in its own process.")] = 2,
    threads: Threads = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the measurements as JSON.")] = False,
    gate: Any = None,
    reports: Any = None,
) -> None:
    """Time ARTIFACT on its golden inputs (p50/p90/p99, throughput, peak RSS); exit 1 on a regression."""
    from edgeexport.pipeline import benchmark
    from edgeexport.validation.machine import describe_machine
    from edgeexport.validation.report import latency_table

    run = benchmark(artifact, reference=reference, warmup=warmup, iterations=iterations, rounds=rounds, threads=threads,
                    gate=gate, reports=reports)
    if json_output:
        print_json([s.to_dict() for s in run.latency])
    else:
        console.print(latency_table(run.latency))
        errors.print(f"measured on {describe_machine(run.machine)}", highlight=False, markup=False)
    say_written(reports)
    exit_on("latency", run.failures)


@app.command()
@one_line_errors
def matrix(
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", help="Zoo models, name or name:task, repeatable or comma-separated, or all: every model "
                         "and task (default: every model, its default task).")] = None,
    targets: Annotated[Optional[list[str]], typer.Option(
        "--targets", help=f"Targets ({TARGETS}), repeatable or comma-separated (default: every installed one).")
    ] = None,
    precisions: Annotated[Optional[list[str]], typer.Option(
        "--precisions", help="Precisions, repeatable or comma-separated, or all: every precision of each target "
                             "(default: fp32).")] = None,
    preset: Annotated[str, typer.Option(help="tiny (random, small) or full (published size).")] = "tiny",
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder of results/ and the matrix files.")] = Path("matrix"),
    jobs: Annotated[int, typer.Option(min=1, help="Combinations run in parallel processes.")] = 1,
    strict: Annotated[bool, typer.Option(help="Exit 1 when any combination fails or is refused, not only when one "
                                               "errs (an erred one runs again on the next run).")] = False,
    expect: Annotated[Optional[Path], typer.Option(help="A committed matrix.json (docs/matrix.json): run its "
                                                        "combinations and exit 1 when a status differs from it.")] = None,
) -> None:
    """Convert and validate every model x target x precision; resumable, writes matrix.json/.md/.html to OUTPUT."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeexport.matrix import claimed, console_view, drift, plan, run_matrix
    from edgeexport.matrix_readme import load_matrix

    expected = load_matrix(expect) if expect else None
    if expected is not None and (models or targets or precisions):
        raise UsageError("--expect runs the combinations of its matrix; leave out --models, --targets and --precisions")
    combinations = claimed(expected) if expected else plan(models, targets, precisions or ["fp32"], preset)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=errors) as bar:
        task = bar.add_task("matrix", total=len(combinations))
        result = run_matrix(output, combinations, jobs=jobs, progress=lambda done, total, message: bar.update(
            task, completed=done, total=total, description=message))
    console.print(console_view(result))
    errors.print(f"wrote {output / 'matrix.md'}, matrix.html and matrix.json", highlight=False, markup=False)
    if expected is not None:
        exit_on(f"matrix against {expect}", drift(expected, result))
    exit_on("matrix", result.failures() if strict else result.errors())


@app.command()
@one_line_errors
def inspect(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    preflight: Annotated[Optional[str], typer.Option(
        metavar="TARGET", help=f"Also check the ONNX graph against what TARGET ({', '.join(preflight_targets())}) "
                               "supports: unsupported ops, attributes, dtypes and known pitfalls; exit 1 on an "
                               "error.")] = None,
    locate: Annotated[bool, typer.Option(help="With --preflight: name each problem's PyTorch module (needs torch; "
                                              "re-exports the model).")] = False,
) -> None:
    """Show ARTIFACT's manifest, op histogram, parameter count and size (of each component of a bundle)."""
    from edgeexport.inspection import inspect as run_inspect

    inspected = run_inspect(artifact, preflight=preflight, locate=locate)
    if json_output:
        print_json(inspected.to_dict())
    else:
        print_inspection(artifact, inspected)
    exit_on("preflight", inspected.failures())


@app.command()
@one_line_errors
@add_flags(map(option_flag, get_exporter("tensorrt").options), dict)
def build(
    artifact: Annotated[Path, typer.Argument(help="TensorRT artifact folder (from convert --target tensorrt).")],
    **options: Any,
) -> None:
    """Build ARTIFACT's TensorRT engine on this machine's GPU, atomically; the manifest records TensorRT and the GPU."""
    from edgeexport.trt.build import build_artifact

    with console.status("building the TensorRT engine", spinner="dots"):
        manifest = build_artifact(artifact, **options)
    engine = manifest.runtime_options["engine"]
    errors.print(f"built {artifact / engine['file']} (TensorRT {engine['tensorrt']}, {engine['gpu']}, compute "
                 f"capability {engine['compute_capability']})", highlight=False, markup=False)


@app.command()
@one_line_errors
def generate(
    artifact: Annotated[Path, typer.Argument(help="causal-lm-with-past artifact or seq2seq-lm-with-past bundle.")],
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text (needs a tokenizer in the artifact).")] = None,
    prompt_ids: Annotated[Optional[str], typer.Option(help="Prompt token ids, e.g. 1,2,3.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Most tokens to generate.", show_default="artifact's config")] = None,
    min_new_tokens: Annotated[Optional[int], typer.Option(help="EOS is banned before this many tokens.",
                                                          show_default="artifact's config")] = None,
    num_beams: Annotated[Optional[int], typer.Option(help="Beams of beam search (1 = none).",
                                                     show_default="artifact's config")] = None,
    length_penalty: Annotated[Optional[float], typer.Option(help="Beam scores are divided by length ** this.",
                                                            show_default="artifact's config")] = None,
    early_stopping: Annotated[Optional[str], typer.Option(help="Beam search stops: true (num_beams finished), false "
                                                          "(no better beam likely) or never (none possible).",
                                                          show_default="artifact's config")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(help="Penalty of tokens already in the sequence (1 = none).",
                                                                show_default="artifact's config")] = None,
    no_repeat_ngram_size: Annotated[Optional[int], typer.Option(help="Ban repeating n-grams of this size (0 = none).",
                                                                show_default="artifact's config")] = None,
    do_sample: Annotated[Optional[bool], typer.Option("--do-sample/--greedy", help="Sample instead of choosing the "
                                                      "most likely tokens.", show_default="artifact's config")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature.", show_default="artifact's config")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens (0 = all).",
                                                 show_default="artifact's config")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling probability mass.",
                                                   show_default="artifact's config")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sampler.")] = None,
    threads: Threads = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the text, token ids and timings as JSON once "
                                                             "generation ends (nothing streams).")] = False,
) -> None:
    """Generate from a prompt with ARTIFACT, streaming tokens to stdout (beam search: once it ends), then tokens/s to
    stderr. Options left out take the artifact's generation config (edgeexport inspect shows it)."""
    from edgeexport.generator import Generator, TextStreamer

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with Generator.load(artifact, threads=threads) as generator:
        output = generator.generate(generator.prompt(prompt, prompt_ids), max_new_tokens=max_new_tokens,
                                    min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                                    early_stopping=early_stopping, repetition_penalty=repetition_penalty,
                                    no_repeat_ngram_size=no_repeat_ngram_size, do_sample=do_sample,
                                    temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                    streamer=None if json_output else TextStreamer(generator, write))
        if json_output:
            print_json({"text": generator.decode(output.tokens[0]), **output.to_dict()})
    if not json_output:
        write("\n")
    if output.ended_at_once:
        errors.print(Text.assemble(("note:", "yellow"), f" the model ended the sequence at once (its first new token "
                                   f"is EOS, id {output.tokens[0, 0]}); --min-new-tokens N bans EOS for N tokens"),
                     highlight=False)
    errors.print(f"{output.tokens.size} token{'s' * (output.tokens.size != 1)} in {output.total_s:.2f} s: "
                 f"{output.tokens_per_s:.1f} tokens/s (first token {output.first_token_s * 1e3:.1f} ms)",
                 highlight=False, markup=False)


@app.command()
@one_line_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="Artifact folder of a task model (not a generation decoder).")],
    text: Annotated[Optional[list[str]], typer.Option(
        help="Text to classify or embed (needs a tokenizer in the artifact); for question answering, the question. "
             "Repeat it to embed several texts with a sentence-embedding artifact and print their cosine "
             "similarities.")] = None,
    text_pair: Annotated[Optional[str], typer.Option(help="Second text: the context of a question.")] = None,
    image: Annotated[Optional[Path], typer.Option(help="Image file (PNG, JPEG) for vision models (needs Pillow).")
                     ] = None,
    audio: Annotated[Optional[Path], typer.Option(help="16-bit PCM WAV file at the model's sampling rate.")] = None,
    inputs: Annotated[Optional[Path], typer.Option(help="Model inputs as an .npz of named arrays.")] = None,
    case: Annotated[str, typer.Option(help="Golden case whose inputs to use when no input is given.")] = "example",
    classes: Annotated[int, typer.Option(min=1, help="Classes shown per row, most likely first (classification "
                                                     "tasks).")] = 5,
    threshold: Annotated[float, typer.Option(help="Lowest score of a kept detection (object detection).")] = 0.5,
    threads: Threads = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the decoded results as JSON.")] = False,
) -> None:
    """Run ARTIFACT on text, an image, audio or arrays (default: its golden inputs) and print what the outputs
    mean: labels, answer spans, boxes, maps or transcripts. Needs no torch."""
    from edgeexport.pipeline import predict as run_predict

    prediction = run_predict(artifact, text=text, text_pair=text_pair, image=image, audio=audio, inputs=inputs,
                             case=case, classes=classes, threshold=threshold, threads=threads)
    if json_output:
        print_json(prediction.to_json())
        return
    for line in prediction.describe():
        console.print(line, highlight=False, markup=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
