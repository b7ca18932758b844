"""Inline SVG charts for the self-contained HTML report: histogram, scatter and strip plot.

Hand-written so that reports need no plotting package and no external assets; every chart
is a standalone ``<svg>`` element styled by attributes only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

WIDTH = 460
HEIGHT = 280
LEFT, RIGHT, TOP, BOTTOM = 58, 24, 14, 46
LOG_SPAN = 20
PALETTE = ("#2563eb", "#ea580c", "#059669", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")
INK, MUTED, GRID, FONT = "#1f2937", "#6b7280", "#e5e7eb", "font-family=\"system-ui, sans-serif\""
Format = Callable[[float], str]


def number(value: float) -> str:
    """Tick label: three significant digits, whole numbers up to 99999 in full, no ``-0``."""
    if 1000 <= abs(value) < 1e5:
        return format(value, ".0f")
    return format(0.0 if abs(value) < 1e-300 else value, ".3g")


def power_of_ten(value: float) -> str:
    """Tick label of a log10 axis: ``1e-6``."""
    return f"1e{value:g}"


@dataclass(frozen=True)
class Scale:
    """Linear map of data ``[lo, hi]`` onto pixels ``[start, end]``."""

    lo: float
    hi: float
    start: float
    end: float

    @classmethod
    def fit(cls, lo: float, hi: float, start: float, end: float, *, pad: float = 0.04) -> Scale:
        """A scale over ``[lo, hi]`` widened by ``pad`` of the span (one unit when the span is zero)."""
        span = hi - lo
        if not span > 0:
            return cls(lo - 0.5, hi + 0.5, start, end)
        return cls(lo - pad * span, hi + pad * span, start, end)

    @classmethod
    def decades(cls, lo: float, hi: float, start: float, end: float) -> Scale:
        """A scale of a log10 axis over whole decades around ``[lo, hi]``, so both ends get a tick."""
        return cls(math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1), start, end)

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    def ticks(self, count: int = 5, *, min_step: float = 0.0) -> list[float]:
        """Round values (steps of 1, 2 or 5 times a power of ten, at least ``min_step``) inside the scale."""
        raw = (self.hi - self.lo) / count
        magnitude = 10 ** math.floor(math.log10(raw))
        step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), min_step)
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(int((self.hi - first) / step + 1e-9) + 1)]


def _svg(width: float, height: float, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
            f'height="{height:.0f}" role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
            + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, *, anchor: str = "middle", size: int = 11, color: str = MUTED,
          extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{color}" {FONT} '
            f'{extra}>{html.escape(text)}</text>')


def _axes(x: Scale, y: Scale, *, xlabel: str, ylabel: str, x_format: Format = number,
          y_format: Format | None = number, x_min_step: float = 0.0, y_min_step: float = 0.0) -> list[str]:
    """Plot background, grid, tick labels and axis titles (no horizontal grid when ``y_format`` is None)."""
    top, bottom, left, right = y.end, y.start, x.start, x.end
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fafafa" '
             f'stroke="{GRID}"/>']
    for tick in x.ticks(min_step=x_min_step):
        px = x(tick)
        parts.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{bottom}" stroke="{GRID}"/>')
        parts.append(_text(px, bottom + 15, x_format(tick)))
    for tick in y.ticks(min_step=y_min_step) if y_format is not None else []:
        py = y(tick)
        parts.append(f'<line x1="{left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="{GRID}"/>')
        parts.append(_text(left - 6, py + 4, y_format(tick), anchor="end"))
    parts.append(_text((left + right) / 2, bottom + 34, xlabel, size=12, color=INK))
    if ylabel:
        parts.append(_text(14, (top + bottom) / 2, ylabel, size=12, color=INK,
                           extra=f'transform="rotate(-90 14 {(top + bottom) / 2:.1f})"'))
    return parts


def log_histogram(values: np.ndarray, *, title: str, xlabel: str, bins: int = 30, marker: float | None = None,
                  marker_label: str = "") -> str:
    """Histogram of positive ``values`` on a log axis over whole decades, with an optional dashed vertical
    marker (e.g. the tolerance)."""
    logs = np.log10(values)
    ends = [float(logs.min()), float(logs.max()), *([math.log10(marker)] if marker else [])]
    x = Scale.decades(min(ends), max(ends), LEFT, WIDTH - RIGHT)
    counts, edges = np.histogram(logs, bins=bins, range=(x.lo, x.hi))
    y = Scale(0, max(1, int(counts.max())) * 1.1, HEIGHT - BOTTOM, TOP)
    body = _axes(x, y, xlabel=xlabel, ylabel="elements", x_format=power_of_ten, x_min_step=1.0, y_min_step=1.0)
    for count, lo, hi in zip(counts, edges[:-1], edges[1:]):
        if count:
            body.append(f'<rect x="{x(lo) + 0.5:.1f}" y="{y(count):.1f}" width="{max(x(hi) - x(lo) - 1, 1):.1f}" '
                        f'height="{y(0) - y(count):.1f}" fill="{PALETTE[0]}" fill-opacity="0.8"/>')
    if marker:
        px = x(math.log10(marker))
        body.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{HEIGHT - BOTTOM}" stroke="{PALETTE[4]}" '
                    'stroke-width="1.5" stroke-dasharray="5 3"/>')
        body.append(_text(px - 4, TOP + 14, marker_label, anchor="end", color=PALETTE[4]))
    return _svg(WIDTH, HEIGHT, title, body)


def scatter(series: Sequence[tuple[str, np.ndarray, np.ndarray]], *, title: str, xlabel: str, ylabel: str) -> str:
    """Points ``(x, y)`` of each named series on equal axes, with the ``y = x`` diagonal and a legend."""
    values = np.concatenate([np.concatenate([xs, ys]) for _, xs, ys in series])
    x = Scale.fit(float(values.min()), float(values.max()), LEFT, WIDTH - RIGHT)
    y = Scale(x.lo, x.hi, HEIGHT - BOTTOM, TOP)
    body = _axes(x, y, xlabel=xlabel, ylabel=ylabel)
    body.append(f'<line x1="{x(x.lo):.1f}" y1="{y(x.lo):.1f}" x2="{x(x.hi):.1f}" y2="{y(x.hi):.1f}" '
                f'stroke="{MUTED}" stroke-dasharray="4 3"/>')
    for i, (name, xs, ys) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        body.extend(f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.6" fill="{color}" fill-opacity="0.6"/>'
                    for a, b in zip(xs, ys))
        if len(series) > 1:
            body.append(f'<circle cx="{LEFT + 12}" cy="{TOP + 12 + 15 * i}" r="4" fill="{color}"/>')
            body.append(_text(LEFT + 20, TOP + 16 + 15 * i, name, anchor="start", color=INK))
    return _svg(WIDTH, HEIGHT, title, body)


def strip(series: Sequence[tuple[str, np.ndarray]], *, title: str, xlabel: str, width: int = 2 * WIDTH) -> str:
    """One row per named series of positive values: every value as a jittered dot over a box (quartiles,
    median, range). The axis is logarithmic when the values span more than :data:`LOG_SPAN` times."""
    left, row = 190, 40
    height = TOP + row * len(series) + BOTTOM
    values = np.concatenate([v for _, v in series])
    log = values.min() > 0 and values.max() / values.min() > LOG_SPAN
    if log:
        series = [(name, np.log10(v)) for name, v in series]
        values = np.log10(values)
        xlabel = f"{xlabel} (log scale)"
    x = (Scale.decades(float(values.min()), float(values.max()), left, width - RIGHT) if log else
         Scale.fit(min(0.0, float(values.min())), float(values.max()), left, width - RIGHT))
    y = Scale(0, len(series), TOP + row * len(series), TOP)
    body = _axes(x, y, xlabel=xlabel, ylabel="", y_format=None, x_min_step=1.0 if log else 0.0,
                 x_format=(lambda v: number(10 ** v)) if log else number)
    jitter = np.random.default_rng(0)
    for i, (name, v) in enumerate(series):
        color, middle = PALETTE[i % len(PALETTE)], y(len(series) - i - 0.5)
        q1, median, q3 = np.percentile(v, [25, 50, 75])
        body.append(f'<line x1="{x(v.min()):.1f}" y1="{middle:.1f}" x2="{x(v.max()):.1f}" y2="{middle:.1f}" '
                    f'stroke="{color}"/>')
        body.append(f'<rect x="{x(q1):.1f}" y="{middle - 11:.1f}" width="{max(x(q3) - x(q1), 1):.1f}" height="22" '
                    f'fill="{color}" fill-opacity="0.15" stroke="{color}"/>')
        body.append(f'<line x1="{x(median):.1f}" y1="{middle - 13:.1f}" x2="{x(median):.1f}" y2="{middle + 13:.1f}" '
                    f'stroke="{color}" stroke-width="2.5"/>')
        body.extend(f'<circle cx="{x(t):.1f}" cy="{middle + j:.1f}" r="2.2" fill="{color}" fill-opacity="0.6"/>'
                    for t, j in zip(v, jitter.uniform(-8, 8, v.size)))
        label = name if len(name) <= 28 else name[:27] + "…"
        body.append(_text(left - 8, middle + 4, label, anchor="end", color=INK))
    return _svg(width, height, title, body)
