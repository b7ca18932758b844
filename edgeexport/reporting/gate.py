"""The CI gate: which findings of a run fail it, and regressions against a baseline report.

``fail_on="any"`` fails on any parity failure and on any regression against the baseline
(when one is given); ``fail_on="regression"`` fails only on regressions, so known failures
recorded in the baseline do not block a release. A baseline is a JSON report written earlier
with ``--report FILE.json``; items are matched by name (parity: case and output, latency:
backend label) and items missing on either side are not compared. A baseline that shares no
item with the run compares nothing and fails the run (``metric="compared"``): it is the wrong
file, and passing would prove nothing.

An output regresses when it fails now but passed in the baseline, or when its RMS error (in
spreads of the reference) exceeds the baseline's by more than ``parity_margin`` times its RMS
bound (a share of the tolerance budget, so noise far below the tolerance never trips the gate). A backend
regresses when its p50 latency exceeds the baseline's by more than ``latency_margin_pct``
percent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeexport.errors import UsageError
from edgeexport.reporting.schema import load_report
from edgeexport.validation.metrics import json_ready
from edgeexport.validation.report import Row, format_number, plural

if TYPE_CHECKING:
    from edgeexport.validation.latency import LatencyStats
    from edgeexport.validation.parity import CaseResult, ParityReport

FAIL_ON = ("any", "regression")
DEFAULT_PARITY_MARGIN = 0.25
DEFAULT_LATENCY_MARGIN_PCT = 10.0


@dataclass(frozen=True)
class BaselineCheck:
    """One comparison against the baseline; truthy when it did not regress.

    ``metric`` is ``status`` (pass/fail), ``rms_error``, ``p50_ms`` or ``compared`` (the baseline
    shares no item with the run: ``current`` is 0 items compared); ``limit`` is the largest value
    that still passes (NaN for ``status`` and ``compared``).
    """

    kind: str
    item: str
    metric: str
    baseline: float
    current: float
    limit: float
    passed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (non-finite floats as None)."""
        return json_ready(asdict(self))


@dataclass(frozen=True)
class Gate:
    """What fails a run: ``fail_on``, the baseline report (a loaded JSON report) and the margins."""

    fail_on: str = "any"
    baseline: dict[str, Any] | None = None
    baseline_path: str = ""
    parity_margin: float = DEFAULT_PARITY_MARGIN
    latency_margin_pct: float = DEFAULT_LATENCY_MARGIN_PCT

    @classmethod
    def create(cls, fail_on: str = "any", baseline: str | Path | None = None, *,
               parity_margin: float = DEFAULT_PARITY_MARGIN,
               latency_margin_pct: float = DEFAULT_LATENCY_MARGIN_PCT) -> Gate:
        """Check the options and load the baseline, before any work is done.

        Raises:
            UsageError: unknown ``fail_on``, ``regression`` without a baseline, a negative
                margin, or a baseline that is not a readable edgeexport JSON report.
        """
        if fail_on not in FAIL_ON:
            raise UsageError(f"unknown --fail-on {fail_on!r}; choose one of: {', '.join(FAIL_ON)}")
        if fail_on == "regression" and baseline is None:
            raise UsageError("--fail-on regression needs --baseline FILE.json (a report written with --report FILE.json)")
        for flag, margin in (("--parity-margin", parity_margin), ("--latency-margin", latency_margin_pct)):
            if margin < 0:
                raise UsageError(f"{flag} must be zero or more, not {margin:g}")
        loaded = load_report(Path(baseline)) if baseline is not None else None
        return cls(fail_on, loaded, str(baseline or ""), parity_margin, latency_margin_pct)

    def checks(self, parity: ParityReport | None, latency: list[LatencyStats]) -> list[BaselineCheck] | None:
        """Every comparison against the baseline; None without a baseline."""
        if self.baseline is None:
            return None
        return [*self._parity_checks(parity), *self._latency_checks(latency)]

    def failures(self, parity: ParityReport | None, checks: list[BaselineCheck] | None) -> list[str]:
        """One line per finding that fails the run under ``fail_on``."""
        regressions = [c.reason if c.metric == "compared" else f"regression: {c.reason}"
                       for c in checks or [] if not c]
        return [*(parity.failures() if parity is not None and self.fail_on == "any" else []), *regressions]

    def compared(self, parity: ParityReport) -> tuple[int, int]:
        """How many of the run's cases, and outputs of those cases, the baseline also has (by name)."""
        if self.baseline is None:
            return 0, 0
        cases = _baseline_cases(self.baseline)
        shared = [case for case in parity.cases if case.case in cases]
        outputs = sum(o.name in {b.get("name") for b in cases[case.case].get("outputs") or []}
                      for case in shared for o in case.outputs)
        return len(shared), outputs

    def describe(self, parity: ParityReport) -> str:
        """``BASELINE (2 cases, 2 outputs compared)``, for the verdict line."""
        cases, outputs = self.compared(parity)
        return f"{self.baseline_path} ({plural(cases, 'case')}, {plural(outputs, 'output')} compared)"

    def _parity_checks(self, parity: ParityReport | None) -> list[BaselineCheck]:
        if parity is None or not parity.cases:
            return []
        cases = _baseline_cases(self.baseline)
        if not self.compared(parity)[1] and not any(c.error for c in parity.cases if c.case in cases):
            run = sorted(c.case for c in parity.cases)
            return [_nothing_compared("parity", f"baseline {self.baseline_path} shares no case or output with this "
                                                f"run (baseline cases {sorted(map(str, cases))}, this run's {run}); "
                                                "pass a report of a validate run of the same model and cases")]
        return [check for case in parity.cases if case.case in cases
                for check in self._case_checks(case, cases[case.case])]

    def _case_checks(self, case: CaseResult, base: dict[str, Any]) -> list[BaselineCheck]:
        """A status check when the case or an output newly fails, else an RMS-error check where the baseline has one."""
        if case.error:
            return [_status_check(case.case, case.error)] if base.get("passed") else []
        outputs = {o.get("name"): o for o in base.get("outputs") or []}
        checks = []
        for out in case.outputs:
            item, base_out = f"{case.case}/{out.name}", outputs.get(out.name, {})
            base_rms = base_out.get("rms_error")
            if base_out.get("passed") and not out:
                checks.append(_status_check(item, out.reason))
            elif isinstance(base_rms, (int, float)):
                limit = base_rms + self.parity_margin * out.bounds.rms_error
                checks.append(BaselineCheck(
                    "parity", item, "rms_error", base_rms, out.rms_error, limit, out.rms_error <= limit,
                    f"{item}: rms error {out.rms_error:.3g} spreads exceeds the baseline's {base_rms:.3g} by more "
                    f"than {self.parity_margin:g} x its bound {out.bounds.rms_error:g}"))
        return checks

    def _latency_checks(self, latency: list[LatencyStats]) -> list[BaselineCheck]:
        base = {row.get("label"): row.get("p50_ms") for row in self.baseline.get("latency") or []}
        if latency and not any(isinstance(base.get(stats.label), (int, float)) for stats in latency):
            return [_nothing_compared("latency", f"baseline {self.baseline_path} shares no backend with this run "
                                                 f"(baseline {sorted(map(str, base))}, this run's "
                                                 f"{sorted(s.label for s in latency)}); pass a report of a bench run "
                                                 "of the same backends")]
        checks = []
        for stats in latency:
            if not isinstance(base.get(stats.label), (int, float)):
                continue
            base_p50 = float(base[stats.label])
            limit = base_p50 * (1 + self.latency_margin_pct / 100)
            checks.append(BaselineCheck(
                "latency", stats.label, "p50_ms", base_p50, stats.p50_ms, limit, stats.p50_ms <= limit,
                f"{stats.label}: p50 {stats.p50_ms:.3f} ms is more than {self.latency_margin_pct:g}% slower than "
                f"the baseline's {base_p50:.3f} ms"))
        return checks

    def to_dict(self) -> dict[str, Any]:
        """The gate's settings (without the baseline's contents)."""
        return {"fail_on": self.fail_on, "baseline": self.baseline_path or None, "parity_margin": self.parity_margin,
                "latency_margin_pct": self.latency_margin_pct}


def _baseline_cases(baseline: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The baseline's parity cases by name (none for a report without parity)."""
    return {c.get("case"): c for c in (baseline.get("parity") or {}).get("cases") or []}


def _nothing_compared(kind: str, reason: str) -> BaselineCheck:
    """A baseline with no item in common with the run: nothing was compared, which proves nothing."""
    return BaselineCheck(kind, "baseline", "compared", math.nan, 0.0, math.nan, False, reason)


def _status_check(item: str, reason: str) -> BaselineCheck:
    """A case or output that fails now but passed in the baseline (1.0 = passed, 0.0 = failed)."""
    return BaselineCheck("parity", item, "status", 1.0, 0.0, math.nan, False,
                         f"{item} fails ({reason}) but passed in the baseline")


BASELINE_COLUMNS = ("item", "metric", "baseline", "current", "limit", "status")


def baseline_rows(checks: list[BaselineCheck]) -> list[Row]:
    """One table row per check, for the report files."""
    return [Row((c.item, c.metric, *_values(c), "PASS" if c else "FAIL"), c.passed, c.reason if not c else "")
            for c in checks]


def _values(check: BaselineCheck) -> tuple[str, str, str]:
    """Baseline, current and limit as text (``passed``/``failed`` for a status check)."""
    if check.metric == "status":
        return "passed", "failed", "-"
    if check.metric == "compared":
        return "-", "nothing", "-"
    return format_number(check.baseline, ".3g"), format_number(check.current, ".3g"), format_number(check.limit, ".3g")
