"""The one HTML report renderer (`consortium.ui.report`): one self-contained file, every value
escaped, charts drawn as inline SVG."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from consortium.ui.charts import Axis, LineChart, Series, svg
from consortium.ui.report import (
    Facts,
    ImageGrid,
    Page,
    Paragraph,
    Section,
    Table,
    render,
    roc_chart,
    write,
)

HOSTILE = '<script>alert("x")</script><img src="https://evil.example/x.png"> & \'q\''
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def external_references(html: str) -> list[str]:
    """Anything that would make the browser fetch or run something from elsewhere."""
    found = re.findall(r"""(?:src|href|xlink:href|action)\s*=\s*["']?\s*(?:https?:)?//""", html)
    found += re.findall(r"<script\b", html, flags=re.I)
    found += re.findall(r"<link\b", html, flags=re.I)
    found += re.findall(r"@import|url\(", html, flags=re.I)
    return found


def hostile_page() -> Page:
    chart = roc_chart(
        HOSTILE,
        [(HOSTILE, [0.0, 0.001, 0.05, 1.0], [0.0, 0.02, 0.3, 1.0])],
        caption=HOSTILE,
    )
    return Page(
        HOSTILE,
        [
            Section(
                HOSTILE,
                [
                    Paragraph(HOSTILE, "warning"),
                    Facts([(HOSTILE, HOSTILE)]),
                    Table([HOSTILE, "n"], [[HOSTILE, 1.23456], ["b", None], ["c", math.inf]]),
                    chart,
                ],
            ),
            Section("second", [Paragraph("ok", "ok")]),
            Section("third", [Paragraph("note", "note")]),
        ],
        subtitle=HOSTILE,
        meta=[(HOSTILE, HOSTILE)],
        footer=HOSTILE,
    )


def test_a_page_is_one_self_contained_file_with_every_value_escaped(tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    write(hostile_page(), out, now=NOW)
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert external_references(html) == []
    assert "http://" not in html and "https://" not in html.replace(
        "https://evil.example", ""
    )  # the only URL is the escaped hostile text
    # Every value was escaped: the hostile markup appears only as text.
    assert "<script>" not in html and "<img" not in html
    assert html.count("&lt;script&gt;alert(") >= 9  # title, heading, subtitle, meta, facts, ...
    assert "<style>" in html and html.count("<svg") == 1  # CSS inline, the chart inline
    assert "2026-12-03 12:00 UTC" in html
    # Tables: numbers right-aligned, floats to 3 digits, None and infinity as symbols.
    assert '<td class="num">1.23</td>' in html and '<td class="num">∞</td>' in html
    # Three sections or more get a table of contents with in-page links only.
    assert re.findall(r'href="([^"]*)"', html) == [
        "#script-alert-x-script-img-src-https-evil-example-x-png-q",
        "#second",
        "#third",
    ]


def test_the_same_page_renders_to_the_same_bytes() -> None:
    assert render(hostile_page(), now=NOW) == render(hostile_page(), now=NOW)


def test_a_chart_is_svg_without_a_namespace_url_and_escapes_its_labels() -> None:
    chart = LineChart(
        'a "title" <b>',
        Axis("x & y", log=True, lo=1e-3, hi=1.0, percent=True),
        Axis("<y>", log=True, lo=1e-3, hi=1.0, percent=True),
        [
            Series("<s1>", [0.0, 1e-3, 0.5, 1.0], [0.0, 0.01, math.nan, 1.0]),
            Series("ref", [1e-3, 1.0], [1e-3, 1.0], dashed=True, reference=True),
            Series("c", [0.1], [0.1], color='red" onload="x'),
        ],
    )
    out = str(svg(chart))
    assert out.startswith("<svg ") and out.endswith("</svg>")
    assert "xmlns" not in out and "http" not in out
    assert "<b>" not in out and "&lt;s1&gt;" in out and "&lt;y&gt;" in out
    assert 'onload="' not in out  # a colour cannot add an attribute
    assert "stroke-dasharray" in out
    # Log axes: one tick per decade, labelled as percentages.
    for label in ("0.1%", "1%", "10%", "100%"):
        assert f">{label}</text>" in out


def test_a_long_curve_is_thinned_to_what_the_pixels_show() -> None:
    n = 100_000
    xs = [i / n for i in range(n + 1)]
    chart = LineChart("t", Axis("x"), Axis("y"), [Series("s", xs, xs)])
    out = str(svg(chart))
    assert len(out) < 40_000  # ~1000 visible pixels, not 10^5 points


@pytest.mark.parametrize("log", [True, False])
def test_roc_chart_has_the_chance_line(log: bool) -> None:
    chart = roc_chart("r", [("a", [0, 0.5, 1], [0, 0.9, 1])], log=log)
    names = [s.name for s in chart.series]
    assert names == ["a", "chance (guessing)"]
    assert chart.x.log is log and chart.y.log is log


def test_every_template_ships_in_the_wheel() -> None:
    """The templates are package data: each file under ui/templates matches a glob of
    pyproject's [tool.setuptools.package-data] (a missing one would break installed reports)."""
    import fnmatch
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    package = repo / "src" / "consortium"
    with (repo / "pyproject.toml").open("rb") as fh:
        globs = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["consortium"]
    templates = [p.relative_to(package).as_posix() for p in package.glob("ui/templates/**/*.j2")]
    assert len(templates) >= 5
    assert [t for t in templates if not any(fnmatch.fnmatch(t, g) for g in globs)] == []
    assert (package / "audit" / "privacy" / "__init__.py").is_file()  # a package, not a folder


def test_images_are_inline_svg_rectangles_with_escaped_labels() -> None:
    image = [[0.0, 0.0, 1.0], [0.5, math.nan, 2.0]]  # out of range and NaN are clamped
    grid = ImageGrid([HOSTILE, "b"], [(HOSTILE, [image, image])], caption=HOSTILE)
    html = render(Page("t", [Section("s", [grid])]), now=NOW)
    assert external_references(html) == [] and "<script>" not in html and "<img" not in html
    assert "data:" not in html and "xmlns" not in html
    assert html.count('<svg class="image"') == 2
    # Runs of equal grey become one rectangle: (black x2, white) and (grey, black, white).
    assert html.count("<rect") == 2 * 5
    assert '<rect x="0" y="0" width="2" height="1" fill="#000000"/>' in html
    assert 'fill="#ffffff"' in html and "&lt;script&gt;" in html
