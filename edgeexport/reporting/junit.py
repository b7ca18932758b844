"""JUnit XML for CI systems: one test case per output and shape case, per backend, and per baseline check.

Suites: ``parity`` (classname ``<model>.<target>.<precision>.<case>``, name the output; a case
that failed before comparing outputs is one test case named after the case), ``latency``
(one passing test case per backend, ``time`` its p50 in seconds) and ``baseline`` (one test
case per check). Every finding that fails the gate is a failing test case whose message is
the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from edgeexport.reporting.document import RunReport
from edgeexport.validation.parity import ParityReport


def render(report: RunReport) -> str:
    """The ``<testsuites>`` document."""
    prefix = ".".join(str(p) for p in (report.model.get("name"), report.target, report.precision))
    root = ET.Element("testsuites", name=f"edgeexport {report.command}: {report.title}")
    if report.parity is not None:
        _parity(ET.SubElement(root, "testsuite", name=f"parity: {report.title}"), report.parity, prefix)
    if report.latency:
        suite = ET.SubElement(root, "testsuite", name=f"latency: {report.title}")
        for stats in report.latency:
            case = ET.SubElement(suite, "testcase", classname=f"{prefix}.latency", name=stats.label,
                                 time=f"{stats.p50_ms / 1e3:.6f}")
            ET.SubElement(case, "system-out").text = (f"p50 {stats.p50_ms:.3f} ms, p90 {stats.p90_ms:.3f} ms, "
                                                      f"p99 {stats.p99_ms:.3f} ms, {stats.iterations} runs")
    if report.checks is not None:
        suite = ET.SubElement(root, "testsuite", name=f"baseline {report.gate.baseline_path}: {report.title}")
        for check in report.checks:
            _case(suite, f"{prefix}.baseline.{check.kind}", f"{check.item} {check.metric}", check.reason,
                  failed=not check)
    for suite in root:
        _count(suite)
    _count(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _parity(suite: ET.Element, parity: ParityReport, prefix: str) -> None:
    for result in parity.cases:
        axes = ",".join(f"{k}={v}" for k, v in result.axes.items())
        classname = f"{prefix}.{result.case}"
        if result.error:
            _case(suite, classname, f"{result.case} [{axes}]", result.error, failed=True)
        for out in result.outputs:
            _case(suite, classname, f"{out.name} [{axes}]", out.reason, failed=not out)


def _case(suite: ET.Element, classname: str, name: str, reason: str, *, failed: bool) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failed:
        ET.SubElement(case, "failure", message=reason, type="edgeexport").text = reason


def _count(element: ET.Element) -> None:
    """Set ``tests``/``failures``/``errors`` from the test cases below ``element``."""
    cases = list(element.iter("testcase"))
    element.set("tests", str(len(cases)))
    element.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    element.set("errors", "0")
