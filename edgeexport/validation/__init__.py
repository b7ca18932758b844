"""Validation: parity metrics and reports, latency. Imports no torch."""

from __future__ import annotations

from edgeexport.validation.latency import LatencyStats, measure
from edgeexport.validation.metrics import OutputComparison, compare_output
from edgeexport.validation.parity import CaseResult, ParityReport, check_artifact, compare_outputs

__all__ = ["CaseResult", "LatencyStats", "OutputComparison", "ParityReport", "check_artifact", "compare_output",
           "compare_outputs", "measure"]
