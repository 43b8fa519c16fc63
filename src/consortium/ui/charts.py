"""Line charts (ROC curves among them) drawn as inline SVG on the server, in Python.

A report must be one self-contained file that opens offline, so charts are not drawn by a
script in the browser: `svg(chart)` returns the `<svg>` element as escaped markup, with every
label passed through `markupsafe.escape`. No `xmlns` attribute is written: inside an HTML page
the parser puts `<svg>` in the SVG namespace by itself, and the file then holds no URL at all.

Axes are linear or logarithmic (base 10). On a log axis, values at or below zero are drawn at
the axis' lower end (a ROC curve starts at FPR 0). Points closer than half a pixel to the
previous one drawn are skipped, so a curve through 10^5 points stays a small file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

#: Series colours (colour-blind safe, after Okabe and Ito), then grey for reference lines.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
REFERENCE = "#888888"


@dataclass(frozen=True)
class Axis:
    """An axis: its label, scale, and range (None: from the data)."""

    label: str
    log: bool = False
    lo: float | None = None
    hi: float | None = None
    percent: bool = False  # tick labels as percentages (0.01 -> 1%)
    whole: bool = False  # ticks at whole numbers only (rounds)


@dataclass(frozen=True)
class Series:
    """One line: points (x[i], y[i]); non-finite points are left out."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    dashed: bool = False
    markers: bool = False
    reference: bool = False  # a reference line (chance, a bound): grey unless `color` is set
    color: str = ""


@dataclass(frozen=True)
class LineChart:
    title: str
    x: Axis
    y: Axis
    series: Sequence[Series]
    caption: str = ""
    width: int = 560
    height: int = 380
    kind: str = field(default="chart", init=False)


_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 18, 30, 48
_LEGEND_ROW = 18


def _fmt(v: float, percent: bool) -> str:
    if percent:
        p = v * 100
        return f"{p:.0f}%" if p >= 1 or p == 0 else f"{p:.1g}%"
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:g}"


def _nice_ticks(lo: float, hi: float, want: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / want
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    v = start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


class _Scale:
    def __init__(self, axis: Axis, values: Sequence[float], a: float, b: float) -> None:
        self.axis = axis
        finite = [v for v in values if math.isfinite(v) and (v > 0 or not axis.log)]
        lo = axis.lo if axis.lo is not None else (min(finite) if finite else 0.0)
        hi = axis.hi if axis.hi is not None else (max(finite) if finite else 1.0)
        if axis.log:
            lo = lo if lo > 0 else (min(finite) if finite else 1e-3)
            hi = hi if hi > lo else lo * 10
        elif hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        lo, hi = self.lo, self.hi
        if self.axis.log:
            v = max(v, lo)
            t = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        else:
            t = (v - lo) / (hi - lo)
        t = min(max(t, 0.0), 1.0)
        return self.a + t * (self.b - self.a)

    def ticks(self) -> list[float]:
        if self.axis.log:
            first, last = math.ceil(math.log10(self.lo) - 1e-9), math.floor(math.log10(self.hi))
            return [10.0**k for k in range(first, last + 1)]
        ticks = _nice_ticks(self.lo, self.hi)
        return [t for t in ticks if t == int(t)] if self.axis.whole else ticks


def _path(points: list[tuple[float, float]]) -> str:
    kept: list[tuple[float, float]] = []
    for p in points:
        if kept and abs(p[0] - kept[-1][0]) < 0.5 and abs(p[1] - kept[-1][1]) < 0.5:
            continue
        kept.append(p)
    if points and kept[-1] != points[-1]:
        kept.append(points[-1])
    return " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(kept))


def svg(chart: LineChart) -> Markup:
    """The chart as an inline `<svg>` element (escaped markup, safe to insert in a page)."""
    w = chart.width
    legend_rows = math.ceil(len(chart.series) / 2)
    h = chart.height + legend_rows * _LEGEND_ROW
    plot_bottom = chart.height - _BOTTOM
    xs = [v for s in chart.series for v in s.x]
    ys = [v for s in chart.series for v in s.y]
    sx = _Scale(chart.x, xs, _LEFT, w - _RIGHT)
    sy = _Scale(chart.y, ys, plot_bottom, _TOP)
    out: list[str] = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" '
        f'aria-label="{escape(chart.title)}">',
        f'<text x="{w / 2:.0f}" y="18" class="title" text-anchor="middle">'
        f"{escape(chart.title)}</text>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{w - _RIGHT - _LEFT}" '
        f'height="{plot_bottom - _TOP}" class="frame"/>',
    ]
    for t in sx.ticks():
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{plot_bottom}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{plot_bottom + 16}" text-anchor="middle" class="tick">'
            f"{escape(_fmt(t, chart.x.percent))}</text>"
        )
    for t in sy.ticks():
        y = sy(t)
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{w - _RIGHT}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_fmt(t, chart.y.percent))}</text>"
        )
    out.append(
        f'<text x="{(_LEFT + w - _RIGHT) / 2:.0f}" y="{plot_bottom + 36}" text-anchor="middle" '
        f'class="label">{escape(chart.x.label)}</text>'
    )
    mid = (_TOP + plot_bottom) / 2
    out.append(
        f'<text x="14" y="{mid:.0f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 14 {mid:.0f})">{escape(chart.y.label)}</text>'
    )
    colours = iter(PALETTE)
    legend: list[tuple[str, str, bool]] = []
    for s in chart.series:
        colour = str(escape(s.color)) or (REFERENCE if s.reference else next(colours, REFERENCE))
        pts = [
            (sx(x), sy(y))
            for x, y in zip(s.x, s.y, strict=False)
            if math.isfinite(x) and math.isfinite(y)
        ]
        if pts:
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            out.append(
                f'<path d="{_path(pts)}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
                f"<title>{escape(s.name)}</title></path>"
            )
            if s.markers:
                out.extend(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in pts
                )
        legend.append((s.name, colour, s.dashed))
    col_w = (w - _LEFT - _RIGHT) / 2
    for i, (name, colour, dashed) in enumerate(legend):
        lx = _LEFT + (i % 2) * col_w
        ly = chart.height + (i // 2) * _LEGEND_ROW + 4
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(
            f'<line x1="{lx:.0f}" y1="{ly:.0f}" x2="{lx + 22:.0f}" y2="{ly:.0f}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 28:.0f}" y="{ly + 4:.0f}" class="legend">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("\n".join(out))


@dataclass(frozen=True)
class ImageGrid:
    """Greyscale images in labelled rows (each image a 2-D array of values from `lo` (black) to
    `hi` (white)), drawn as inline SVG: one rectangle per run of equal grey in a pixel row, 64
    grey levels, so the file holds no bitmap, no data URL, nothing to decode."""

    columns: Sequence[str]
    rows: Sequence[tuple[str, Sequence[Sequence[Sequence[float]]]]]
    lo: float = 0.0
    hi: float = 1.0
    size: int = 96  # pixels on screen per image side
    caption: str = ""
    kind: str = field(default="images", init=False)


#: Grey levels an image is drawn with.
GREYS = 64


def image_svg(
    pixels: Sequence[Sequence[float]], lo: float, hi: float, size: int, label: str
) -> Markup:
    """One greyscale image as an inline `<svg>` (escaped markup), `size` pixels wide."""
    rows = [list(r) for r in pixels]
    h, w = len(rows), max((len(r) for r in rows), default=0)
    span = hi - lo if hi > lo else 1.0
    out = [
        f'<svg class="image" viewBox="0 0 {w} {h}" width="{size}" height="{size * h // max(w, 1)}" '
        f'shape-rendering="crispEdges" role="img" aria-label="{escape(label)}">'
    ]
    for y, row in enumerate(rows):
        x = 0
        while x < len(row):
            v = row[x]
            t = (v - lo) / span if math.isfinite(v) else 0.0
            level = round(min(max(t, 0.0), 1.0) * (GREYS - 1))
            end = x + 1
            while end < len(row):
                u = row[end]
                tu = (u - lo) / span if math.isfinite(u) else 0.0
                if round(min(max(tu, 0.0), 1.0) * (GREYS - 1)) != level:
                    break
                end += 1
            grey = round(level * 255 / (GREYS - 1))
            out.append(
                f'<rect x="{x}" y="{y}" width="{end - x}" height="1" '
                f'fill="#{grey:02x}{grey:02x}{grey:02x}"/>'
            )
            x = end
    out.append("</svg>")
    return Markup("".join(out))
