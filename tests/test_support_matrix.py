"""The README's support matrix, re-proved: every cell of docs/matrix.json (every zoo pair, on every
target and precision the matrix claims, tiny preset) is converted and validated again, and must end
as the matrix says: a claim that no longer passes fails here, and so does a refusal that no longer
happens or a known failure that now fails differently (then the matrix and the README are out of
date). A known failure that passes is allowed: those come from the CPU's kernels (fp16 mask flips in
Mask2Former, an OpenVINO plugin crash) and the matrix was made on one CPU (docs/parity.md).

One test per model, task and target, so ``pytest -n 2`` spreads them. A passing cell must also
have been checked on the golden and fresh cases at both shapes, with every dynamic axis moved.
"""

from __future__ import annotations

from dataclasses import astuple
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest

from edgeexport.exporter import get_exporter
from edgeexport.matrix import CellResult, Combination, Matrix, drift, run_combination
from edgeexport.matrix_readme import load_matrix
from edgeexport.tasks import supported_tasks
from edgeexport.zoo import SPECS

COMMITTED = load_matrix(Path(__file__).resolve().parent.parent / "docs" / "matrix.json")
GROUPS = {key: list(cells) for key, cells in groupby(
    sorted(COMMITTED.cells, key=lambda c: (c.combination.model, c.combination.task, c.combination.target)),
    key=lambda c: (c.combination.model, c.combination.task, c.combination.target))}
MOVED_CASES = {"example": "alternate", "fresh-example": "fresh-alternate"}


def test_the_matrix_claims_every_zoo_pair_on_every_target_at_every_precision() -> None:
    pairs = {(name, task) for name, spec in SPECS.items() for task in supported_tasks(spec.tasks)}
    assert len(SPECS) == 10 and len(pairs) == 16  # 13 model:task pairs and 3 with a cache
    expected = {(model, task, target, precision, "tiny") for model, task in pairs
                for target in ("onnx", "openvino", "coreml") for precision in get_exporter(target).precisions}
    assert {astuple(cell.combination) for cell in COMMITTED.cells} == expected


def _missing(target: str) -> list[str]:
    return get_exporter(target).missing_packages()


def _part(group: tuple[str, str, str], default: bool) -> list[CellResult]:
    """A group's cell at its target's default precision, or all its other cells."""
    precision = get_exporter(group[2]).default_precision
    return [cell for cell in GROUPS[group] if (cell.combination.precision == precision) == default]


# The default suite proves each group at its target's default precision; the other precisions are slow tests,
# which .ci/run runs too (the whole matrix takes most of a 2-core run: the default suite must stay near 20 min).
PARTS = [pytest.param(group, default, id="-".join(group) + ("" if default else "-other-precisions"),
                      marks=() if default else pytest.mark.slow)
         for group in GROUPS for default in (True, False) if _part(group, default)]


@pytest.mark.parametrize(("group", "default"), PARTS)
def test_matrix_cells_end_as_the_readme_says(group: tuple[str, str, str], default: bool) -> None:
    if missing := _missing(group[2]):
        pytest.skip(f"{group[2]} needs {', '.join(missing)}")
    expected = _part(group, default)
    observed = [run_combination(cell.combination) for cell in expected]

    assert not drift(Matrix(expected), Matrix(observed), failures_may_pass=True)
    for cell in observed:
        if cell.status == "passed":
            _assert_checked_at_both_shapes(cell)


def _assert_checked_at_both_shapes(cell: CellResult) -> None:
    """Golden and fresh cases ran at the example and the alternate shape, the alternate moving every axis."""
    assert cell.report is not None
    cases: list[dict[str, Any]] = cell.report["parity"]["cases"]
    by_name = {case["case"].rpartition("/")[2]: case for case in cases}  # bundles name them <role>/<case>
    assert {case["source"] for case in cases} == {"golden", "reference"}
    for first, second in MOVED_CASES.items():
        moved = [axis for axis, size in by_name[first]["axes"].items() if by_name[second]["axes"][axis] != size]
        assert moved == list(by_name[first]["axes"]), f"{cell.combination.key}: {second} keeps an axis of {first}"


def test_drift_names_every_status_the_matrix_no_longer_holds() -> None:
    """Planted: a claim that now fails, a refusal that now passes, a cell not run, a known failure that now
    passes (drift unless failures may pass); an unchanged one is silent."""
    def cell(model: str, status: str, error: str = "") -> CellResult:
        return CellResult(Combination(model, "image-classification", "onnx", "fp32"), status, error=error)

    expected = Matrix([cell("vit", "passed"), cell("convnext", "refused", "no"), cell("detr", "passed"),
                       cell("glpn", "failed")])
    observed = Matrix([cell("vit", "error", "RuntimeError: boom"), cell("convnext", "passed"), cell("glpn", "passed")])
    lines = ["vit-image-classification-tiny-onnx-fp32: the matrix says passes, this run error (RuntimeError: boom)",
             "convnext-image-classification-tiny-onnx-fp32: the matrix says refused, this run passes",
             "detr-image-classification-tiny-onnx-fp32: the matrix says passes; it was not run"]
    assert drift(expected, observed, failures_may_pass=True) == lines
    assert drift(expected, observed) == [*lines, "glpn-image-classification-tiny-onnx-fp32: the matrix says fails, "
                                                 "this run passes"]
