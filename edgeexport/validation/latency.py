"""Latency measurement that compares backends fairly: same boundary, each backend alone, with dispersion.

Every backend is timed at the same boundary, numpy in and numpy out (a runner's whole call;
PyTorch eager with its tensor conversions), after untimed warm-up runs. A sample times as many
back-to-back calls as fill :data:`MIN_SAMPLE_S`, so calls far shorter than the timer's jitter
are still measured (as :mod:`timeit`'s ``autorange`` does). :func:`isolated` runs a measurement
in a fresh process, so that no other backend's thread pool (onnxruntime's spinning workers,
PyTorch's OpenMP team) is alive while one is timed; :func:`speedup` refuses to print a ratio
when either side's spread of samples is too wide for its median to be trusted.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import numpy as np

MIN_SAMPLE_S = 2e-3  # each timed sample lasts at least this long
MAX_DISPERSION = 0.5  # a median is trusted when its p10..p90 band spans at most this share of it
Result = TypeVar("Result")


@dataclass
class LatencyStats:
    """Latency of one backend on one input batch, per call. ``peak_rss_mb`` is the measuring process's peak.

    ``samples_ms`` holds the per-call time of every timed sample, for plots; :meth:`to_dict` leaves it
    out. ``calls_per_sample`` calls were timed together in each sample.
    """

    label: str
    batch: int
    iterations: int
    p50_ms: float
    p10_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float
    peak_rss_mb: float
    calls_per_sample: int = 1
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def dispersion(self) -> float:
        """Width of the p10..p90 band relative to the median (0 for identical samples)."""
        return (self.p90_ms - self.p10_ms) / self.p50_ms if self.p50_ms else float("inf")

    @property
    def stable(self) -> bool:
        """Whether the median is trustworthy enough to compare (dispersion at most :data:`MAX_DISPERSION`)."""
        return self.dispersion <= MAX_DISPERSION

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples_ms"}
        return {**values, "dispersion": self.dispersion}

    @classmethod
    def of(cls, label: str, batch: int, samples_ms: list[float], calls_per_sample: int = 1) -> LatencyStats:
        """Statistics of per-call times (one entry per timed sample)."""
        ms = np.asarray(samples_ms, dtype=np.float64)
        p10, p50, p90, p99 = (float(np.percentile(ms, q)) for q in (10, 50, 90, 99))
        return cls(label=label, batch=batch, iterations=len(ms), p50_ms=p50, p10_ms=p10, p90_ms=p90, p99_ms=p99,
                   mean_ms=float(ms.mean()), throughput=batch * 1e3 / p50 if p50 else float("inf"),
                   peak_rss_mb=peak_rss_mb(), calls_per_sample=calls_per_sample, samples_ms=ms.tolist())

    def merged(self, other: LatencyStats) -> LatencyStats:
        """One set of statistics over the samples of both (rounds of the same backend)."""
        merged = LatencyStats.of(self.label, self.batch, [*self.samples_ms, *other.samples_ms],
                                 max(self.calls_per_sample, other.calls_per_sample))
        merged.peak_rss_mb = max(self.peak_rss_mb, other.peak_rss_mb)
        return merged


def measure(call: Callable[[], Any], *, label: str, batch: int, warmup: int = 3, iterations: int = 20,
            min_sample_s: float = MIN_SAMPLE_S) -> LatencyStats:
    """Time ``call`` (the whole call: numpy in, numpy out) after ``warmup`` untimed runs.

    Args:
        call: One inference, inputs bound.
        label: Backend name for tables.
        batch: Batch size, for throughput.
        warmup: Untimed runs first. Defaults to 3.
        iterations: Timed samples. Defaults to 20.
        min_sample_s: Least duration of a sample: calls shorter than this are timed in groups.
            Defaults to :data:`MIN_SAMPLE_S`.
    """
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    call()
    number = max(1, int(min_sample_s / max(time.perf_counter() - start, 1e-9)) + 1)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        for _ in range(number):
            call()
        samples.append((time.perf_counter() - start) * 1e3 / number)
    return LatencyStats.of(label, batch, samples, number)


@dataclass(frozen=True)
class Speedup:
    """How many times faster ``other`` is than the baseline, or why that cannot be said."""

    value: float | None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.value:.2f}x" if self.value is not None else f"n/a ({self.reason})"


def speedup(baseline: LatencyStats, other: LatencyStats) -> Speedup:
    """``baseline.p50 / other.p50`` when both medians are trustworthy (see :attr:`LatencyStats.stable`)."""
    for stats in (baseline, other):
        if not stats.stable:
            return Speedup(None, f"{stats.label} too noisy: p10..p90 spans {stats.dispersion:.0%} of its p50")
    return Speedup(baseline.p50_ms / other.p50_ms)


def isolated(target: Callable[..., Result], *args: Any) -> Result:
    """Run ``target(*args)`` in a fresh (spawned) process and return its result (a :class:`LatencyStats`,
    or whatever else a measurement returns beside it).

    ``target`` must be a module-level function and its arguments picklable. A failure in the child
    is raised here with its message.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(target, args)


def time_artifact(folder: str, label: str, inputs: Mapping[str, np.ndarray], warmup: int, iterations: int,
                  runner_options: Mapping[str, Any]) -> LatencyStats:
    """An artifact's runner on ``inputs``: the target of :func:`isolated` for a backend's own process
    (this module imports neither torch nor a backend, so the process holds only the runtime)."""
    from edgeexport.runner import load

    with load(folder, verify=False, **runner_options) as runner:
        return measure(lambda: runner(inputs), label=label, batch=len(next(iter(inputs.values()))) if inputs else 1,
                       warmup=warmup, iterations=iterations)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    On Linux, ``VmHWM`` of /proc/self/status: ``ru_maxrss`` would count the parent's memory that a
    spawned process held between fork and exec (a backend process started by one that imported
    torch would report torch's footprint).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
