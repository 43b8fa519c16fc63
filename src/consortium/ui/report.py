"""The one HTML report renderer: a page of sections, each a list of blocks (paragraphs, facts,
tables, line charts, greyscale images), rendered from the Jinja2 templates in
`consortium/ui/templates/` into one self-contained file.

Every static report (the privacy audit now; the regulator report and the dashboard later) builds
a `Page` and calls `render` or `write`; nothing else writes HTML. Decided once (see
docs/architecture.md): one file, CSS inline, charts as SVG drawn here in Python
(`consortium.ui.charts`), no script and no font or image from anywhere, so the file opens the
same offline, in an e-mail attachment, or archived for years.

Jinja2 autoescapes every value (`autoescape=True`): a node name, a stop reason or a task name
with `<`, `&` or quotes is shown as written and can never add markup. Only the SVG that
`charts.svg` returns is inserted as markup, and it escapes its own labels.

    page = Page("Privacy audit", sections=[Section("Summary", [Paragraph("…")])])
    write(page, Path("report.html"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2

from consortium.core.files import atomic_write
from consortium.ui.charts import Axis, ImageGrid, LineChart, Series, image_svg, svg

__all__ = [
    "Axis",
    "Block",
    "Facts",
    "Field",
    "Form",
    "ImageGrid",
    "LineChart",
    "Link",
    "Page",
    "Paragraph",
    "ReceiptChecker",
    "Section",
    "Series",
    "Table",
    "render",
    "roc_chart",
    "write",
]

Tone = Literal["plain", "note", "ok", "warning"]


@dataclass(frozen=True)
class Link:
    """A link: a table cell or a page's navigation. `href` is a path of the dashboard or an
    in-page anchor (`#round-3`); a static report links nowhere else."""

    text: str
    href: str


Cell = str | int | float | Link | None


@dataclass(frozen=True)
class Paragraph:
    """Text; `tone` other than plain draws it as a callout (note, ok, warning)."""

    text: str
    tone: Tone = "plain"
    kind: str = field(default="paragraph", init=False)


@dataclass(frozen=True)
class Facts:
    """Name: value pairs, shown as a definition list."""

    items: Sequence[tuple[str, str]]
    kind: str = field(default="facts", init=False)


@dataclass(frozen=True)
class Table:
    """A table. Cells: text as written, integers as is, floats to 3 significant digits, None
    as a dash; columns whose cells are all numbers (or None) are right-aligned."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    caption: str = ""
    kind: str = field(default="table", init=False)

    def cell(self, value: Cell) -> str:
        if value is None:
            return "-"
        if isinstance(value, Link):
            return value.text
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            if math.isinf(value):
                return "∞" if value > 0 else "-∞"
            return f"{value:.3g}"
        return str(value)

    @staticmethod
    def href(value: Cell) -> str:
        return value.href if isinstance(value, Link) else ""

    def numeric(self, column: int) -> bool:
        cells = [r[column] for r in self.rows if column < len(r)]
        return bool(cells) and all(
            c is None or (isinstance(c, int | float) and not isinstance(c, bool)) for c in cells
        )


@dataclass(frozen=True)
class Field:
    """One input of a `Form`."""

    name: str
    label: str
    type: Literal["text", "number", "textarea", "file"] = "text"
    value: str = ""


@dataclass(frozen=True)
class Form:
    """A form of the dashboard (a static report has none): GET for queries, POST for a receipt
    or an audit run."""

    action: str
    fields: Sequence[Field]
    submit: str
    method: Literal["get", "post"] = "get"
    kind: str = field(default="form", init=False)

    @property
    def multipart(self) -> bool:
        return any(f.type == "file" for f in self.fields)


@dataclass(frozen=True)
class ReceiptChecker:
    """The static receipt checker: the consent roots exported from a ledger (`data`), and the
    page's one script, which checks a pasted or chosen receipt against them in the browser.
    The data is embedded as JSON (`tojson` escapes `<`, `>`, `&` and quotes), so no value from
    the folder can end the script element."""

    data: Mapping[str, Any]
    kind: str = field(default="receipt_checker", init=False)


Block = Paragraph | Facts | Table | LineChart | Form | ReceiptChecker | ImageGrid


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block]
    anchor: str = ""  # the section's id for in-page links (default: from the title)

    @property
    def id(self) -> str:
        text = self.anchor or self.title
        slug = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
        return "-".join(p for p in slug.split("-") if p) or "section"


@dataclass(frozen=True)
class Page:
    title: str
    sections: Sequence[Section]
    subtitle: str = ""
    meta: Sequence[tuple[str, str]] = ()  # shown under the title (what, when, by which version)
    footer: str = ""
    links: Sequence[Link] = ()  # the dashboard's navigation (a static report has none)


def roc_chart(
    title: str,
    curves: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    log: bool = True,
    floor: float = 1e-3,
    extra: Sequence[Series] = (),
    caption: str = "",
) -> LineChart:
    """ROC curves (name, false positive rates, true positive rates) with the chance line; on
    log-log axes from `floor` to 1 by default, where attacks at low false positive rates show."""
    lo = floor if log else 0.0
    chance = (
        [10 ** (math.log10(lo) + i * -math.log10(lo) / 50) for i in range(51)] if log else [0, 1]
    )
    series = [Series(name, list(fpr), list(tpr)) for name, fpr, tpr in curves]
    series.append(Series("chance (guessing)", chance, chance, dashed=True, reference=True))
    series.extend(extra)
    return LineChart(
        title,
        Axis("false positive rate", log=log, lo=lo, hi=1.0, percent=True),
        Axis("true positive rate", log=log, lo=lo, hi=1.0, percent=True),
        series,
        caption=caption,
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("consortium.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["svg"] = svg
    env.globals["image_svg"] = image_svg
    return env


_ENV: jinja2.Environment | None = None


def render(page: Page, *, now: datetime | None = None) -> str:
    """The page as one HTML document (a string). `now` stamps it (default: the current time)."""
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    html: str = _ENV.get_template("page.html.j2").render(page=page, generated=stamp)
    return html


def write(page: Page, path: Path, *, now: datetime | None = None) -> None:
    """Render `page` into `path`, atomically (FileWriteError in one line if it cannot)."""
    atomic_write(Path(path), render(page, now=now).encode())
