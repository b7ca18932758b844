"""Latency measurement: warm-up runs untimed, then percentiles of the backend call alone."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    """Latency of one backend on one input batch. ``peak_rss_mb`` is the process peak so far.

    ``samples_ms`` holds every timed run, for plots; :meth:`to_dict` leaves it out.
    """

    label: str
    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    peak_rss_mb: float
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples_ms"}


def measure(call: Callable[[], float | None], *, label: str, batch: int, warmup: int = 3,
            iterations: int = 20) -> LatencyStats:
    """Time ``call`` after ``warmup`` untimed runs.

    ``call`` may return the seconds its backend call took (a runner's
    ``last_inference_time``); if it returns None the whole call is timed.
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        reported = call()
        times.append(reported if reported is not None else time.perf_counter() - start)
    ms = np.array(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return LatencyStats(label=label, batch=batch, iterations=iterations, p50_ms=p50,
                        p90_ms=float(np.percentile(ms, 90)), p99_ms=float(np.percentile(ms, 99)),
                        mean_ms=float(ms.mean()), throughput=batch * 1e3 / p50 if p50 else float("inf"),
                        peak_rss_mb=peak_rss_mb(), samples_ms=ms.tolist())


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
