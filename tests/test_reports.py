"""Report files of validate and bench: versioned JSON, JUnit XML, Markdown and self-contained HTML."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeexport.cli import app
from edgeexport.conversion import ConversionResult
from edgeexport.manifest import Tolerance
from edgeexport.pipeline import bench
from edgeexport.reporting import SCHEMA, Gate, RunReport, render
from edgeexport.validation.metrics import SAMPLE_SIZE, compare_output
from edgeexport.validation.parity import ParityReport, check_parity, compare_outputs
from edgeexport.validation.report import PARITY_COLUMNS, parity_rows, parity_table, verdict

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_writes_every_format(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    paths = [tmp_path / "r" / f"report.{suffix}" for suffix in ("json", "xml", "md", "html")]
    code, _, err = invoke("validate", str(bert_artifact.artifact), *(a for p in paths for a in ("--report", str(p))))
    assert code == 0, err
    assert err.strip().splitlines() == [f"wrote {', '.join(map(str, paths))}",
                                        f"PASS: 2 cases x 1 output of {bert_artifact.artifact} within bounds (onnx "
                                        "fp32 on onnxruntime)"]
    data = json.loads(paths[0].read_text())
    assert data["schema"] == SCHEMA == "edgeexport.report.v2"
    assert data["command"] == "validate" and data["passed"] and data["failures"] == []
    assert data["model"]["name"] == "bert" and data["target"] == "onnx" and data["precision"] == "fp32"
    assert [c["case"] for c in data["parity"]["cases"]] == ["example", "alternate"]
    assert data["latency"] == [] and data["baseline_checks"] is None and data["gate"]["fail_on"] == "any"
    assert data["machine"]["cpu"] and isinstance(data["machine"]["cpu_flags"], list)
    suites = ET.fromstring(paths[1].read_text())
    cases = suites.findall(".//testcase")
    assert suites.get("tests") == "2" and suites.get("failures") == "0"
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("bert.onnx.fp32.example", "logits [batch=2,sequence=8]"),
        ("bert.onnx.fp32.alternate", "logits [batch=3,sequence=13]")]
    markdown = paths[2].read_text()
    assert markdown.startswith("## edgeexport validate: bert (sequence-classification)")
    assert "| case | shape | output | max err | rms err | scale |" in markdown and markdown.count("✅ PASS") == 2
    assert "<svg" in paths[3].read_text()


def test_unknown_report_suffix_is_refused_before_any_work(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    code, _, err = invoke("validate", str(bert_artifact.artifact), "--report", str(tmp_path / "r.txt"))
    assert code == 2
    assert err.strip() == (f"error: --report {tmp_path / 'r.txt'}: unknown report format '.txt'; end the name with "
                           "one of .json, .xml, .md, .html")


def test_failures_carry_their_reason(bert_artifact: ConversionResult) -> None:
    parity = check_parity(bert_artifact.artifact, tolerance=Tolerance(0.0, 0.0, 0.0, 0.0, 0.0))
    report = RunReport.create("validate", bert_artifact.artifact, bert_artifact.manifest, gate=Gate(), parity=parity)
    assert not report and len(report.failures) == 2
    suites = ET.fromstring(render(report, ".xml"))
    failures = suites.findall(".//testcase/failure")
    assert suites.get("failures") == "2" and len(failures) == 2
    assert failures[0].get("message", "").startswith("max error ") and "exceeds 0 (+ floor 0;" in failures[0].text
    markdown = render(report, ".md")
    assert "— ❌ failed" in markdown and markdown.count("❌ FAIL: max error") == 2
    page = render(report, ".html")
    assert "FAILED" in page and page.count("class=failed") == 2


def test_bench_report_keeps_every_timed_run(bert_artifact: ConversionResult, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    code, _, err = invoke("bench", str(bert_artifact.artifact), "--iterations", "5", "--report", str(out),
                          "--report", str(tmp_path / "bench.xml"))
    assert code == 0, err
    data = json.loads(out.read_text())
    assert data["command"] == "bench" and data["parity"] is None
    [row] = data["latency"]
    assert row["label"] == "onnx (onnxruntime, fp32)" and len(row["samples_ms"]) == 4  # 2 rounds of 5 // 2
    assert row["p10_ms"] <= row["p50_ms"] <= row["p90_ms"] and row["dispersion"] >= 0
    assert data["machine"]["usable_cpus"] >= 1
    case = ET.fromstring((tmp_path / "bench.xml").read_text()).find(".//testcase")
    assert case is not None and case.get("name") == "onnx (onnxruntime, fp32)" and float(case.get("time", 0)) > 0


def test_samples_include_the_worst_element_and_stay_out_of_json() -> None:
    reference = np.linspace(-1, 1, 10_000).reshape(100, 100)
    target = reference.copy()
    target[37, 71] += 1.0
    result = compare_output("y", target, reference, Tolerance(1e-3, 0.0, 1e-3, 1e-3, 1e-3))
    assert result.sample is not None and result.sample.size == 10_000
    assert result.sample.reference.size <= SAMPLE_SIZE and result.sample.errors.max() == pytest.approx(1.0)
    assert "sample" not in result.to_dict()


@pytest.fixture(scope="module")
def html_page(bert_artifact: ConversionResult) -> str:
    """A validate report (golden and fresh cases, so four series) with latency of two backends appended."""
    report = RunReport.create("validate", bert_artifact.artifact, bert_artifact.manifest, gate=Gate(),
                              parity=bert_artifact.report,
                              latency=bench(bert_artifact.artifact, reference=bert_artifact.reference, iterations=10))
    return render(report, ".html")


def test_html_is_self_contained(html_page: str) -> None:
    page = html_page
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3  # histogram, scatter, latency
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|url\(", page)
    assert set(re.findall(r"https?://[^\"' )]+", page)) == {"http://www.w3.org/2000/svg"}


def test_html_renders_in_headless_chromium(html_page: str, tmp_path: Path) -> None:
    """The page draws something: many colours, and most rows of the screenshot are not plain background."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    image = pytest.importorskip("PIL.Image")
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(html_page, encoding="utf-8")
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1100,1600",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(image.open(shot).convert("RGB"))
    assert pixels.shape == (1600, 1100, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    background = pixels[0, 0]
    busy_rows = (np.abs(pixels.astype(int) - background).sum(axis=2) > 30).any(axis=1).mean()
    assert len(colours) > 100 and busy_rows > 0.5
    plots = pixels[700:1300]  # the error plots: the histogram's blue bars are there
    assert ((plots[..., 2] > 200) & (plots[..., 0] < 120)).sum() > 500


# --------------------------------------------------------------------------- the terminal


def _wide_report() -> ParityReport:
    """Two cases of a KV-cache decoder with long axis and output names; the second fails."""
    rng = np.random.default_rng(0)
    tolerance = Tolerance(atol=1e-7, rounding=1e-6, max_error=1e-3, rms_error=1e-4, scale_error=1e-3)
    reference = {"logits": rng.normal(size=(2, 5, 40)).astype(np.float32),
                 "present.11.value": rng.normal(size=(2, 2, 6, 16)).astype(np.float32)}
    report = ParityReport("gpt2-causal-lm-with-past-onnx-fp32-tiny-random", "onnx", "onnxruntime", "fp32", tolerance)
    for case, factor in (("fresh-alternate", 1 + 1e-7), ("example", 1.19)):
        target = {name: value * factor for name, value in reference.items()}
        report.cases.append(compare_outputs(case, "golden", {"batch": 3, "past_sequence": 6, "sequence": 1}, target,
                                            reference, tolerance=tolerance, logits=["logits"]))
    return report


def _rendered(table: object, width: int) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(table)
    return console.export_text()


def test_parity_table_fits_80_columns_without_cutting_a_number() -> None:
    report = _wide_report()
    text = _rendered(parity_table(report, width=80), 80)
    assert max(map(len, text.splitlines())) <= 80
    numbers = [cell for row in parity_rows(report) for cell in row.cells[3:7] if cell != "-"]
    header = next(line for line in text.splitlines() if "case" in line)
    kept = [column for column in PARITY_COLUMNS if column in header]
    assert "shape" not in kept and {"case", "output", "max err", "status"} <= set(kept)
    shown = [cell for row in parity_rows(report) for column, cell in zip(PARITY_COLUMNS, row.cells) if column in kept
             and column in ("max err", "rms err", "scale", "top-1") and cell != "-"]
    assert shown and all(f" {number} " in text for number in shown), text
    assert "present.11.value" in text and "fresh-alternate" in text and "…" not in text
    wide = _rendered(parity_table(report, width=200), 200)
    assert all(f" {number} " in wide for number in numbers) and "batch=3,past_sequence=6,sequence=1" in wide
    # The planted failure: every column in 80 columns cuts numbers (rich ends them with an ellipsis).
    assert "…" in _rendered(parity_table(report), 80)


def test_verdict_names_the_artifact_and_counts_cases() -> None:
    report = _wide_report()
    assert verdict(report) == ("FAIL: 1 of 2 cases x 2 outputs of gpt2-causal-lm-with-past-onnx-fp32-tiny-random out "
                               "of bounds (onnx fp32 on onnxruntime)")
    del report.cases[1]
    assert verdict(report) == ("PASS: 1 case x 2 outputs of gpt2-causal-lm-with-past-onnx-fp32-tiny-random within "
                               "bounds (onnx fp32 on onnxruntime)")
