"""Loaders for a node's own data, with the record ids consent is granted for.

A task's `data(node)` can hand the work to these (`Task("mypkg", model=model, data=table_data)`):

- `table_data`: CSV (header row) or Parquet, described by `[data.table]` in node.toml: the
  record-id column (text; integers become their decimal text), the feature columns (numbers,
  as float32) and the label column (integer classes 0, 1, …, or float32 targets).
- `image_data`: one folder per class (`[data.images]`); a file's stem is its record id, its
  folder its class (the classes' order gives the labels).

Every value is checked as it is read, and the first problem is one `TaskError` naming the file
and the row (CSV: its line, the header being line 1; Parquet: its row, from 1) or the image:
a missing column, a value of the wrong type, a missing or non-finite value (NaN, infinity, or a
number too large for float32), a record id that is not valid or not distinct. Nothing is
loaded until every row passed.

Parquet needs `pyarrow` (`pip install 'consortium[parquet]'`), images `Pillow`
(`pip install 'consortium[images]'`); each is imported only when used.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.consent.record_ids import RecordIdError, record_id
from consortium.learning.sources import ImageSource, TableSource
from consortium.learning.task import Examples, NodeContext, TaskError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_F32_MAX = float(np.finfo(np.float32).max)


def _base(node: NodeContext, what: str) -> Path:
    if node.data_dir is None:
        raise TaskError(f"node.toml [data] sets no data_dir: the folder holding the {what}")
    return node.data_dir


def _path(node: NodeContext, name: str, what: str) -> Path:
    path = _base(node, what) / name
    if not path.exists():
        raise TaskError(f"{path}: no such {what} (node.toml [data] data_dir and the {what} name)")
    return path


# -- tables -------------------------------------------------------------------------------------


def table_data(node: NodeContext) -> tuple[Examples, Examples]:
    """(train, test) examples from the files `[data.table]` names; a task's `data`."""
    source = node.table
    if source is None:
        raise TaskError(
            "node.toml has no [data.table]: name the files and the record-id, feature and "
            "label columns"
        )
    return (
        read_table(_path(node, source.train, "file"), source),
        read_table(_path(node, source.test, "file"), source),
    )


def read_table(path: Path, source: TableSource) -> Examples:
    """The examples of one CSV or Parquet file, checked against the schema."""
    if source.format == "csv":
        return _read_csv(path, source)
    return _read_parquet(path, source)


class _Rows:
    """Checked values, row by row, then arrays; `where` names a row in messages."""

    def __init__(self, path: Path, source: TableSource) -> None:
        self.path, self.source = path, source
        self.ids: list[str] = []
        self.seen: dict[str, str] = {}
        self.x: list[list[float]] = []
        self.y: list[float | int] = []

    def number(self, where: str, column: str, value: Any) -> float:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TaskError(f"{self.path.name} {where}: column {column!r} is missing a value")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"{self.path.name} {where}: column {column!r} holds {value!r}, not a number"
            ) from None
        if not math.isfinite(number) or abs(number) > _F32_MAX:
            raise TaskError(
                f"{self.path.name} {where}: column {column!r} holds {value!r}, which is not a "
                "finite float32"
            )
        return number

    def add(self, where: str, rid: Any, features: list[Any], label: Any) -> None:
        s = self.source
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            raise TaskError(f"{self.path.name} {where}: column {s.record_id!r} is missing a value")
        try:
            rid = record_id(rid)
        except RecordIdError as exc:
            raise TaskError(f"{self.path.name} {where}: {exc}") from None
        if rid in self.seen:
            raise TaskError(
                f"{self.path.name} {where}: record id {rid!r} is already on {self.seen[rid]}"
            )
        self.seen[rid] = where
        x = [self.number(where, c, v) for c, v in zip(s.features, features, strict=True)]
        if s.label_type == "float":
            self.y.append(self.number(where, s.label, label))
        elif (klass := _class(label)) is not None:
            self.y.append(klass)
        elif label is None or label == "":
            raise TaskError(f"{self.path.name} {where}: column {s.label!r} is missing a value")
        else:
            raise TaskError(
                f"{self.path.name} {where}: column {s.label!r} holds {label!r}, not a class "
                '(0, 1, …; set label_type = "float" for numeric targets)'
            )
        self.ids.append(rid)
        self.x.append(x)

    def examples(self) -> Examples:
        if not self.ids:
            raise TaskError(f"{self.path.name} has no rows")
        y: npt.NDArray[Any] = (
            np.asarray(self.y, dtype=np.int64)
            if self.source.label_type == "class"
            else np.asarray(self.y, dtype=np.float32)
        )
        return Examples(np.asarray(self.x, dtype=np.float32), y, np.asarray(self.ids))


def _class(label: Any) -> int | None:
    """A class label (0, 1, …) from an integer or its decimal text, or None."""
    if isinstance(label, int) and not isinstance(label, bool) and label >= 0:
        return label
    if isinstance(label, str) and label.isascii() and label.isdigit():
        return int(label)
    return None


def _read_csv(path: Path, source: TableSource) -> Examples:
    rows = _Rows(path, source)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise TaskError(f"{path.name} is empty: it needs a header row naming its columns")
            twice = sorted({h for h in header if header.count(h) > 1})
            if twice:
                raise TaskError(f"{path.name}: the header names {twice[0]!r} twice")
            missing = [c for c in source.columns() if c not in header]
            if missing:
                raise TaskError(
                    f"{path.name} has no column {missing[0]!r} (its columns: "
                    f"{', '.join(header)}); the schema is [data.table] in node.toml"
                )
            at = {c: header.index(c) for c in source.columns()}
            for fields in reader:
                where = f"line {reader.line_num}"
                if not fields:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise TaskError(
                        f"{path.name} {where}: {len(fields)} fields, the header has {len(header)}"
                    )
                rows.add(
                    where,
                    fields[at[source.record_id]].strip(),
                    [fields[at[c]] for c in source.features],
                    fields[at[source.label]].strip(),
                )
    except csv.Error as exc:
        raise TaskError(f"{path.name}: not valid CSV: {exc}") from None
    except UnicodeDecodeError:
        raise TaskError(f"{path.name}: not UTF-8 text") from None
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc.strerror or exc}") from None
    return rows.examples()


def _read_parquet(path: Path, source: TableSource) -> Examples:
    try:
        import pyarrow as pa  # optional, and large
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(
            "reading Parquet needs pyarrow on this node: pip install 'consortium[parquet]'"
        ) from None
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise TaskError(f"{path.name} is not a readable Parquet file: {exc}") from None
    names = list(schema.names)
    missing = [c for c in source.columns() if c not in names]
    if missing:
        raise TaskError(
            f"{path.name} has no column {missing[0]!r} (its columns: {', '.join(names)}); the "
            "schema is [data.table] in node.toml"
        )
    for column in [*source.features, source.label]:
        kind = schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise TaskError(f"{path.name}: column {column!r} has type {kind}, not a number")
    kind = schema.field(source.record_id).type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
    ):
        raise TaskError(
            f"{path.name}: column {source.record_id!r} has type {kind}; record ids are text "
            "(or integers)"
        )
    if source.label_type == "class" and not pa.types.is_integer(schema.field(source.label).type):
        raise TaskError(
            f"{path.name}: column {source.label!r} has type {schema.field(source.label).type}; "
            'class labels are integers (set label_type = "float" for numeric targets)'
        )
    try:
        table = pq.read_table(path, columns=source.columns())
    except (OSError, pa.ArrowException) as exc:
        raise TaskError(f"{path.name} is not a readable Parquet file: {exc}") from None
    columns = {c: table.column(c).to_pylist() for c in source.columns()}
    rows = _Rows(path, source)
    for i in range(table.num_rows):
        rows.add(
            f"row {i + 1}",
            columns[source.record_id][i],
            [columns[c][i] for c in source.features],
            columns[source.label][i],
        )
    return rows.examples()


# -- image folders ------------------------------------------------------------------------------


def image_data(node: NodeContext) -> tuple[Examples, Examples]:
    """(train, test) examples from the class folders `[data.images]` names; a task's `data`."""
    source = node.images
    if source is None:
        raise TaskError("node.toml has no [data.images]: name the train and test folders")
    train_dir = _path(node, source.train, "folder")
    classes = source.classes or sorted(
        p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise TaskError(f"{train_dir} holds no class folders (one folder per class)")
    return (
        read_image_folder(train_dir, source, classes),
        read_image_folder(_path(node, source.test, "folder"), source, classes),
    )


def _images(root: Path, classes: list[str]) -> Iterator[tuple[int, Path]]:
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            raise TaskError(f"{entry}: expected only class folders in {root}")
        if entry.name not in classes:
            raise TaskError(
                f"{entry}: {entry.name!r} is not one of the classes ({', '.join(classes)}); "
                "list it in [data.images] classes"
            )
        for path in sorted(entry.iterdir()):
            if path.name.startswith("."):
                continue
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                raise TaskError(
                    f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)}): class folders "
                    "hold only images"
                )
            yield classes.index(entry.name), path


def read_image_folder(root: Path, source: ImageSource, classes: list[str]) -> Examples:
    """The examples of one folder of class folders: float32 pixels in [0, 1], shape (channels,
    height, width); labels by `classes`; record ids the file stems."""
    try:
        from PIL import Image, UnidentifiedImageError  # optional
    except ImportError:
        raise TaskError(
            "reading images needs Pillow on this node: pip install 'consortium[images]'"
        ) from None
    mode = "L" if source.channels == 1 else "RGB"
    seen: dict[str, Path] = {}
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    ids: list[str] = []
    shape: tuple[int, ...] | None = None
    first: Path | None = None
    for label, path in _images(root, classes):
        try:
            rid = record_id(path.stem)
        except RecordIdError as exc:
            raise TaskError(f"{path}: its name is not a record id: {exc}") from None
        if rid in seen:
            raise TaskError(f"{path} and {seen[rid]} have the same record id {rid!r}")
        seen[rid] = path
        try:
            with Image.open(path) as opened:
                img = opened.convert(mode)
                if source.size is not None:
                    height, width = source.size
                    img = img.resize((width, height))
                pixels = np.asarray(img, dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise TaskError(f"{path} cannot be read as an image: {exc}") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if shape is None:
            shape, first = pixels.shape, path
        elif pixels.shape != shape:
            raise TaskError(
                f"{path} is {pixels.shape[2]}x{pixels.shape[1]} pixels, {first} is "
                f"{shape[2]}x{shape[1]}: set [data.images] size to resize them"
            )
        xs.append(pixels)
        ys.append(label)
        ids.append(rid)
    if not xs:
        raise TaskError(f"{root} holds no images")
    return Examples(np.stack(xs), np.asarray(ys, dtype=np.int64), np.asarray(ids))
