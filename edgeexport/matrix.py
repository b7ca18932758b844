"""The support matrix: convert and validate every model x target x precision, resumably and in parallel.

Each combination's result is one JSON file in ``<folder>/results/`` (written atomically), so
a run that stops resumes where it left off, and the matrix of a folder is every result in
it: per-job folders of a CI job matrix merge by copying their ``results/`` files together
and running :func:`write_matrix` (``edgeexport matrix -o FOLDER`` with nothing left to run).
A combination that fails is recorded with its one-line error; nothing stops the matrix. One
that erred (neither a verdict nor a refusal) runs again on the next run.

``<folder>/matrix.json`` (schema ``edgeexport.matrix.v2``, see docs/reports.md),
``matrix.md`` and ``matrix.html`` hold the whole matrix; the README's table is rendered
from a committed ``matrix.json`` by :mod:`edgeexport.matrix_readme`.
"""

from __future__ import annotations

import functools
import html
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgeexport import exporter, packages
from edgeexport.errors import EdgeExportError, UnsupportedError, UsageError
from edgeexport.tasks import supported_tasks
from edgeexport.zoo import PRESETS, SPECS, get_spec

SCHEMA = "edgeexport.matrix.v2"  # v2: rms_error (in spreads) and runtime per cell
RESULTS_DIR = "results"
STATUS_WORD = {"passed": "passes", "failed": "fails", "error": "error", "refused": "refused"}
STATUS_MARK = {"passed": "✅ passes", "failed": "❌ fails", "error": "⚠️ error", "refused": "🚫 refused"}
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Combination:
    """One model:task, target, precision and preset to convert and validate."""

    model: str
    task: str
    target: str
    precision: str
    preset: str = "tiny"

    @property
    def key(self) -> str:
        """File stem of its result: ``<model>-<task>-<preset>-<target>-<precision>``."""
        return f"{self.model}-{self.task}-{self.preset}-{self.target}-{self.precision}"


@dataclass
class CellResult:
    """The outcome of one combination: ``passed``, ``failed`` (parity), ``error`` (with ``error``) or
    ``refused`` (a known-broken combination the exporter refuses, :class:`UnsupportedError`, with its reason).

    ``failures`` lists the parity failures, ``rms_error`` is the largest RMS error (in spreads of
    the reference) over every case and output (None when nothing was compared), ``runtime`` what
    ran the artifact (the runner's label: the MIL reference interpreter for CoreML off macOS),
    ``report`` the full ``edgeexport.report.v2`` document of the validation (kept in the result
    file only).
    """

    combination: Combination
    status: str
    error: str = ""
    failures: list[str] = field(default_factory=list)
    rms_error: float | None = None
    runtime: str = ""
    exporter: str = ""
    seconds: float = 0.0
    report: dict[str, Any] | None = None

    def to_dict(self, *, with_report: bool = True) -> dict[str, Any]:
        """The result file's content; ``with_report=False`` leaves the full report out (for ``matrix.json``)."""
        data = {**asdict(self.combination), "status": self.status, "error": self.error, "failures": self.failures,
                "rms_error": self.rms_error, "runtime": self.runtime, "exporter": self.exporter,
                "seconds": round(self.seconds, 2)}
        return {**data, "report": self.report} if with_report else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        """Read what :meth:`to_dict` wrote (the report is optional)."""
        combination = Combination(data["model"], data["task"], data["target"], data["precision"], data["preset"])
        return cls(combination, data["status"], data.get("error", ""), list(data.get("failures", [])),
                   data.get("rms_error"), data.get("runtime", ""), data.get("exporter", ""),
                   float(data.get("seconds", 0.0)), data.get("report"))


@dataclass
class Matrix:
    """Every result of a matrix folder, in a stable order."""

    cells: list[CellResult]

    def columns(self) -> list[tuple[str, str]]:
        """The (target, precision) pairs present, sorted."""
        return sorted({(c.combination.target, c.combination.precision) for c in self.cells})

    def rows(self) -> list[tuple[str, str, str]]:
        """The (model, task, preset) triples present, sorted."""
        return sorted({(c.combination.model, c.combination.task, c.combination.preset) for c in self.cells})

    def failures(self) -> list[str]:
        """Keys of the combinations that did not pass (failed, refused or errored)."""
        return [c.combination.key for c in self.cells if c.status != "passed"]

    def errors(self) -> list[str]:
        """``<key> erred (<error>)`` for each combination that erred: it has no verdict, and runs again on the next
        run."""
        return [f"{c.combination.key} erred ({c.error})" for c in self.cells if c.status == "error"]

    def cell(self, row: tuple[str, str, str], column: tuple[str, str]) -> CellResult | None:
        """The result of one row and column, or None when that combination was not run."""
        return self._grid.get((row, column))

    @functools.cached_property
    def _grid(self) -> dict[tuple[tuple[str, str, str], tuple[str, str]], CellResult]:
        return {((c.combination.model, c.combination.task, c.combination.preset),
                 (c.combination.target, c.combination.precision)): c for c in self.cells}

    def to_dict(self) -> dict[str, Any]:
        """The ``edgeexport.matrix.v2`` document (cells without their full reports)."""
        return {"schema": SCHEMA, "cells": [c.to_dict(with_report=False) for c in self.cells]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Matrix:
        """Read an ``edgeexport.matrix.v2`` document.

        Raises:
            UsageError: another schema.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"not an edgeexport matrix (schema {SCHEMA!r} expected); write one with edgeexport matrix")
        return cls([CellResult.from_dict(c) for c in data["cells"]])


def plan(models: Iterable[str] | None = None, targets: Iterable[str] | None = None,
         precisions: Iterable[str] = ("fp32",), preset: str = "tiny") -> list[Combination]:
    """Every combination, after checking the names (before any work).

    Args:
        models: Zoo models as ``name`` (its default task) or ``name:task``; comma-separated lists
            are split; ``all`` is every model with every task (cache variants included). Defaults
            to every zoo model with its default task.
        targets: Target names. Defaults to every target whose backend is installed.
        precisions: Precisions, or ``all``; a target is paired only with those it has (the others
            show as ``–``). Defaults to fp32.
        preset: ``tiny`` or ``full``. Defaults to ``tiny``.

    Raises:
        UsageError: an unknown model, task, target or preset, or a precision no chosen target has.
        MissingBackendError: torch is not installed (every combination converts), or a named target's extra.
    """
    packages.require_torch("matrix")
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    names = split_names(models or SPECS)
    pairs = [(name, task) for name, spec in SPECS.items() for task in supported_tasks(spec.tasks)] \
        if names == ["all"] else [_model_task(name) for name in names]
    names = split_names(targets) if targets else [t for t in exporter.targets()
                                              if not exporter.get_exporter(t).missing_packages()]
    chosen = {t: installed(t).precisions for t in names}
    wanted = split_names(precisions)
    if wanted == ["all"]:
        wanted = list(dict.fromkeys(precision for available in chosen.values() for precision in available))
    for precision in wanted:
        if not any(precision in available for available in chosen.values()):
            raise UsageError(f"no chosen target has precision {precision!r}; "
                             + "; ".join(f"{t}: {', '.join(available)}" for t, available in chosen.items()))
    return [Combination(model, task, target, precision, preset) for model, task in pairs
            for target, available in chosen.items() for precision in wanted if precision in available]


def claimed(expected: Matrix) -> list[Combination]:
    """The combinations of a committed matrix, to run again (``edgeexport matrix --expect``).

    Raises:
        MissingBackendError: torch, or the extra of one of its targets, is not installed.
    """
    packages.require_torch("matrix")
    for target in dict.fromkeys(c.combination.target for c in expected.cells):
        installed(target)
    return [c.combination for c in expected.cells]


def installed(target: str) -> exporter.Exporter:
    """The exporter of ``target``, whose packages must be installed: a matrix refuses in one line (exit 2) what
    would otherwise be a column of errors.

    Raises:
        UsageError: an unknown target; MissingBackendError: its packages are missing.
    """
    found = exporter.get_exporter(target)
    found.check_available()
    return found


def drift(expected: Matrix, observed: Matrix, *, failures_may_pass: bool = False) -> list[str]:
    """One line for each combination of ``expected`` whose status ``observed`` does not reproduce: a claim
    that no longer holds, a refusal that no longer happens, a known failure that now passes or fails
    differently, or one that did not run.

    Statuses are compared, not numbers (errors vary with the CPU within the bounds). With
    ``failures_may_pass``, a known failure (``failed`` or ``error``) that passes is no drift: where a
    failure comes from the CPU's kernels (an fp16 mask flip, a plugin crash), another CPU may pass it.
    """
    seen = {c.combination: c for c in observed.cells}
    lines = []
    for cell in expected.cells:
        now = seen.get(cell.combination)
        if now is None:
            lines.append(f"{cell.combination.key}: the matrix says {STATUS_WORD[cell.status]}; it was not run")
        elif now.status != cell.status and not (failures_may_pass and cell.status in ("failed", "error")
                                                and now.status == "passed"):
            reason = now.error or (now.failures[0] if now.failures else "")
            lines.append(f"{cell.combination.key}: the matrix says {STATUS_WORD[cell.status]}, this run "
                         f"{STATUS_WORD[now.status]}{f' ({reason})' if reason else ''}")
    return lines


def split_names(values: Iterable[str]) -> list[str]:
    """Names given repeated or comma-separated (``--models a,b --models c``), in order."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _model_task(name: str) -> tuple[str, str]:
    model, _, task = name.partition(":")
    tasks = supported_tasks(get_spec(model).tasks)
    if task and task not in tasks:
        raise UsageError(f"model {model!r} has no task {task!r}; choose one of: {', '.join(tasks)}")
    return model, task or tasks[0]


def run_combination(combination: Combination) -> CellResult:
    """Convert and validate one combination in a temporary folder; any failure becomes the result's error.

    Every exception is caught on purpose: one broken combination must not stop the matrix.
    """
    from edgeexport.conversion import convert
    from edgeexport.reporting import Gate, RunReport

    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeexport-matrix-") as tmp:
            result = convert(combination.model, target=combination.target, task=combination.task,
                             preset=combination.preset, precision=combination.precision, output_dir=Path(tmp) / "a")
    except Exception as exc:  # noqa: BLE001 - recorded as the combination's one-line error
        status = "refused" if isinstance(exc, UnsupportedError) else "error"
        return CellResult(combination, status, error=_one_line(exc), seconds=time.perf_counter() - start)
    report = result.report
    assert report is not None  # convert validates by default
    errors = [o.rms_error for case in report.cases for o in case.outputs if math.isfinite(o.rms_error)]
    run = RunReport.create("validate", result.artifact, result.manifest, gate=Gate(), parity=report)
    exporter = result.manifest.exporter
    return CellResult(combination, "passed" if report.passed else "failed", failures=run.failures,
                      rms_error=max(errors) if errors else None, runtime=report.runtime,
                      exporter="/".join(str(exporter[k]) for k in ("name", "strategy") if exporter.get(k)),
                      seconds=time.perf_counter() - start, report=run.to_dict())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if isinstance(exc, EdgeExportError) else f"{type(exc).__name__}: {text}"
    return text if len(text) <= 300 else text[:299] + "…"


def run_matrix(folder: str | Path, combinations: Sequence[Combination], *, jobs: int = 1,
               progress: Progress | None = None) -> Matrix:
    """Run every combination without a result in ``folder`` (or whose result is an error), then write and return
    the folder's matrix.

    Args:
        folder: Output folder; results go to ``<folder>/results/<combination>.json``.
        combinations: From :func:`plan`.
        jobs: Parallel worker processes (1 runs in this process). Defaults to 1.
        progress: Called with the number done (those found in ``folder`` included), the total and
            a short message, once at the start and after each combination.
    """
    say = progress or (lambda _done, _total, _message: None)
    results = Path(folder) / RESULTS_DIR
    results.mkdir(parents=True, exist_ok=True)
    todo = [c for c in combinations if (saved := _load(results / f"{c.key}.json")) is None or saved.status == "error"]
    done = len(combinations) - len(todo)
    say(done, len(combinations), f"{done} already in {folder}" if done else "starting")
    for result in _results(todo, jobs):
        _save(results / f"{result.combination.key}.json", result)
        done += 1
        say(done, len(combinations), f"{result.combination.key}: {result.status}")
    return write_matrix(folder)


def _results(todo: list[Combination], jobs: int) -> Iterable[CellResult]:
    if jobs <= 1 or len(todo) <= 1:
        yield from map(run_combination, todo)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                             initargs=(threads,)) as pool:
        futures: dict[Future[CellResult], Combination] = {pool.submit(run_combination, c): c for c in todo}
        for future in as_completed(futures):
            yield future.result()


def _limit_threads(threads: int) -> None:
    """Give each worker an equal share of the cores (read by torch when the worker imports it)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _load(path: Path) -> CellResult | None:
    """A saved result, or None when it is missing or unreadable (then it runs again)."""
    try:
        return CellResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(path: Path, result: CellResult) -> None:
    """Write atomically, so an interrupted run never leaves half a result."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result.to_dict(), indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def write_matrix(folder: str | Path) -> Matrix:
    """Collect every result in ``folder`` and write ``matrix.json``, ``matrix.md`` and ``matrix.html`` there."""
    folder = Path(folder)
    cells = [r for p in sorted((folder / RESULTS_DIR).glob("*.json")) if (r := _load(p)) is not None]
    matrix = Matrix(cells)
    (folder / "matrix.json").write_text(json.dumps(matrix.to_dict(), indent=1) + "\n", encoding="utf-8")
    (folder / "matrix.md").write_text(markdown(matrix), encoding="utf-8")
    (folder / "matrix.html").write_text(render_html(matrix), encoding="utf-8")
    return matrix


@dataclass
class Notes:
    """Numbered notes for the cells that did not pass: ``number`` of each such cell, and each note's text
    (``<model> <task> on <target> <precisions>: <reason>``) by number. Cells of one model, task and target
    with the same reason share a note."""

    number: dict[Combination, int]
    text: dict[int, str]


def _notes(matrix: Matrix) -> Notes:
    failing = [c for row in matrix.rows() for col in matrix.columns()
               if (c := matrix.cell(row, col)) is not None and c.status != "passed"]
    shared: dict[tuple[str, str, str, str], tuple[int, list[str]]] = {}
    number = {}
    for cell in failing:
        c, reason = cell.combination, cell.error or (cell.failures[0] if cell.failures else "")
        index, precisions = shared.setdefault((c.model, c.task, c.target, reason), (len(shared) + 1, []))
        precisions.append(c.precision)
        number[c] = index
    return Notes(number, {index: f"{model} {task} on {target} {', '.join(precisions)}: {reason}"
                          for (model, task, target, reason), (index, precisions) in shared.items()})


def markdown(matrix: Matrix) -> str:
    """One models x precisions table per target, headed by what ran it, then numbered notes for the cells
    that did not pass (what the README shows)."""
    notes, ran = _notes(matrix), runtimes(matrix)
    lines: list[str] = []
    for target in sorted({t for t, _ in matrix.columns()}):
        columns = [column for column in matrix.columns() if column[0] == target]
        lines += [f"**{target}**" + (f" (ran on {', '.join(ran[target])})" if target in ran else "") + ":", "",
                  "| model | task | " + " | ".join(precision for _, precision in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        lines += [f"| {row[0]} | {row[1]} | " + " | ".join(_markdown_cell(matrix.cell(row, column), notes)
                                                         for column in columns) + " |" for row in matrix.rows()]
        lines.append("")
    lines += [f"{i}. {text.replace('|', '/')}" for i, text in notes.text.items()]
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown_cell(cell: CellResult | None, notes: Notes) -> str:
    if cell is None:
        return "–"
    mark = STATUS_MARK[cell.status]
    return f"{mark} [{notes.number[cell.combination]}]" if cell.status != "passed" else mark


def runtimes(matrix: Matrix) -> dict[str, list[str]]:
    """What ran each target's cells (runner labels), so a reader knows e.g. CoreML cells ran on the MIL
    reference interpreter, not on Core ML."""
    ran: dict[str, set[str]] = {}
    for cell in matrix.cells:
        if cell.runtime:
            ran.setdefault(cell.combination.target, set()).add(cell.runtime)
    return {target: sorted(labels) for target, labels in sorted(ran.items())}


def render_html(matrix: Matrix) -> str:
    """The matrix as one self-contained HTML page (hover a cell for its RMS error, runtime and time)."""
    from edgeexport.reporting.html import STYLE

    columns, notes = matrix.columns(), _notes(matrix)
    head = "".join(f"<th>{html.escape(f'{t} {p}')}</th>" for t, p in columns)
    rows = []
    for row in matrix.rows():
        tds = "".join(_html_cell(matrix.cell(row, column), notes) for column in columns)
        rows.append(f"<tr><td>{html.escape(row[0])}</td><td>{html.escape(row[1])}</td>{tds}</tr>")
    items = "".join(f"<li value={i}>{html.escape(text)}</li>" for i, text in notes.text.items())
    passed = sum(c.status == "passed" for c in matrix.cells)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>edgeexport matrix</title>'
            f"<style>{STYLE}</style></head><body><main><h1>edgeexport support matrix</h1>"
            f'<p class="meta">{passed} of {len(matrix.cells)} combinations pass.</p>'
            f'<div class="card"><table><thead><tr><th>model</th><th>task</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{f"<ol class=failures>{items}</ol>" if items else ""}</div>'
            "</main></body></html>\n")


def _html_cell(cell: CellResult | None, notes: Notes) -> str:
    if cell is None:
        return "<td>–</td>"
    hint = f"rms error {cell.rms_error:.3g} spreads, " if cell.rms_error is not None else ""
    hint += f"ran on {cell.runtime}, " if cell.runtime else ""
    hint += f"{cell.seconds:.1f} s" + (f", {cell.exporter}" if cell.exporter else "")
    note = f" [{notes.number[cell.combination]}]" if cell.status != "passed" else ""
    return f'<td class="{cell.status}" title="{html.escape(hint)}">{html.escape(STATUS_WORD[cell.status] + note)}</td>'


def console_view(matrix: Matrix) -> Group:
    """The matrix for the terminal: a rich table of coloured status words, then the numbered notes."""
    columns, notes = matrix.columns(), _notes(matrix)
    table = Table(title=f"support matrix: {sum(c.status == 'passed' for c in matrix.cells)} of {len(matrix.cells)} pass")
    for name in ("model", "task", *(f"{t} {p}" for t, p in columns)):
        table.add_column(name)
    colours = {"passed": "green", "failed": "red", "error": "yellow", "refused": "magenta"}
    for row in matrix.rows():
        cells = [matrix.cell(row, column) for column in columns]
        table.add_row(row[0], row[1], *(Text("–") if c is None else Text(
            c.status + (f" [{notes.number[c.combination]}]" if c.status != "passed" else ""), colours[c.status])
            for c in cells))
    lines = [Text(f"[{i}] {text}") for i, text in notes.text.items()]
    return Group(table, *lines)
