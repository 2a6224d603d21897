"""Server-rendered SVG charts: lines and stacked bars over a range's periods.

Colours come from classes styled by gateway/static/gateway/dashboard.css with the admin's own
variables, so the charts follow its light and dark themes; no script, no inline style. Each
point and bar carries a <title>, which browsers show on hover.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 600, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 10, 12, 24  # room for the axes' labels
MAX_X_LABELS = 8
COLOURS = 6  # classes dash-c0 … dash-c5; "other" has its own


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per period; None: nothing to show (no requests)
    other: bool = False  # the sum of the series not shown on their own


Format = Callable[[float], str]


def ticks(maximum: float, count: int = 4) -> list[float]:
    """Round tick values from 0 to at least `maximum` (steps of 1, 2, 2.5 or 5 times 10^k)."""
    if maximum <= 0 or not math.isfinite(maximum):
        maximum = 1
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [round(step * i, 12) for i in range(math.ceil(maximum / step - 1e-9) + 1)]


def _colour(index: int, series: Series) -> str:
    return "dash-other" if series.other else f"dash-c{index % COLOURS}"


def _frame(labels: Sequence[str], top: float, fmt: Format) -> tuple[list[str], float, float]:
    """The grid, the y axis' labels and the x axis' labels; the plot's width and height."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for value in ticks(top):
        y = TOP + plot_h - plot_h * value / top
        parts.append(
            f'<line class="dash-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="dash-axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(value))}</text>"
        )
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    band = plot_w / max(len(labels), 1)
    for index, label in enumerate(labels):
        if (len(labels) - 1 - index) % every:  # the newest period always has its label
            continue
        x = LEFT + band * (index + 0.5)
        parts.append(
            f'<text class="dash-axis" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    return parts, plot_w, plot_h


def _figure(title: str, svg_parts: list[str], series: Sequence[Series], empty: bool) -> SafeString:
    legend = ""
    if len(series) > 1:
        legend = '<ul class="dash-legend">{}</ul>'.format(
            "".join(
                f'<li><span class="dash-swatch {_colour(i, s)}"></span>{escape(s.name)}</li>'
                for i, s in enumerate(series)
            )
        )
    if empty:
        svg_parts.append(
            f'<text class="dash-empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            "No usage in this range</text>"
        )
    return mark_safe(  # noqa: S308 - every name and label above went through escape()
        f'<figure class="dash-chart"><figcaption>{escape(title)}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(svg_parts)}</svg>{legend}</figure>'
    )


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[Series], fmt: Format
) -> SafeString:
    """One line per series; a gap where a value is None."""
    values = [v for s in series for v in s.values if v is not None]
    top = ticks(max(values, default=0))[-1]
    parts, plot_w, plot_h = _frame(labels, top, fmt)
    band = plot_w / max(len(labels), 1)
    for index, one in enumerate(series):
        colour, path, points = _colour(index, one), [], []
        pen = "M"
        for at, value in enumerate(one.values):
            if value is None:
                pen = "M"
                continue
            x, y = LEFT + band * (at + 0.5), TOP + plot_h - plot_h * value / top
            path.append(f"{pen}{x:.1f} {y:.1f}")
            pen = "L"
            points.append(
                f'<circle class="dash-point {colour}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(labels[at])} {escape(one.name)}: {escape(fmt(value))}</title>"
                "</circle>"
            )
        if path:
            parts.append(f'<path class="dash-line {colour}" d="{" ".join(path)}"/>')
        parts.extend(points)
    return _figure(title, parts, series, empty=not any(values))


def stacked_bars(
    title: str, labels: Sequence[str], series: Sequence[Series], fmt: Format
) -> SafeString:
    """One bar per period, its series stacked from the first (at the bottom) up."""
    heights = [sum(s.values[at] or 0 for s in series) for at in range(len(labels))]
    top = ticks(max(heights, default=0))[-1]
    parts, plot_w, plot_h = _frame(labels, top, fmt)
    band = plot_w / max(len(labels), 1)
    width = band * 0.72
    for at, label in enumerate(labels):
        base = 0.0
        x = LEFT + band * at + (band - width) / 2
        for index, one in enumerate(series):
            value = one.values[at] or 0
            if value <= 0:
                continue
            y = TOP + plot_h - plot_h * (base + value) / top
            parts.append(
                f'<rect class="dash-bar {_colour(index, one)}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{width:.1f}" height="{plot_h * value / top:.1f}">'
                f"<title>{escape(label)} {escape(one.name)}: {escape(fmt(value))}</title></rect>"
            )
            base += value
    return _figure(title, parts, series, empty=not any(heights))
