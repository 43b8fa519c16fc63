"""Data loaders with record ids: CSV, Parquet and image folders, the schema in node.toml."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from consortium.learning.loaders import image_data, read_table, table_data
from consortium.learning.sources import ImageSource, TableSource
from consortium.learning.task import NodeContext, TaskError
from consortium.node.config import load_node_config

SCHEMA = TableSource(record_id="patient", features=["age", "bmi"], label="outcome")
HEADER = "patient,age,bmi,outcome,notes"
GOOD = ["p-001,54,22.5,1,x", "p-002,61,31.0,0,", "MRN 7,38,27.25,1,y"]


def csv_file(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_csv_with_text_record_ids_through_node_toml(tmp_path: Path) -> None:
    csv_file(tmp_path / "train.csv", GOOD)
    csv_file(tmp_path / "test.csv", ["t-1,40,20.0,0,"])
    (tmp_path / "node.toml").write_text(
        f'[data]\ndata_dir = "{tmp_path}"\n'
        '[data.table]\nrecord_id = "patient"\nfeatures = ["age", "bmi"]\nlabel = "outcome"\n'
    )
    train, test = table_data(load_node_config(tmp_path).data.context("n"))
    assert train.record_ids.tolist() == ["p-001", "p-002", "MRN 7"]
    assert train.x.dtype == np.float32 and train.x.tolist() == [[54, 22.5], [61, 31], [38, 27.25]]
    assert train.y.dtype == np.int64 and train.y.tolist() == [1, 0, 1]
    assert test.record_ids.tolist() == ["t-1"] and len(test) == 1
    targets = read_table(tmp_path / "train.csv", SCHEMA.model_copy(update={"label_type": "float"}))
    assert targets.y.dtype == np.float32


@pytest.mark.parametrize(
    ("rows", "header", "refusal"),
    [
        (["p-3,50,,1,"], HEADER, "line 5: column 'bmi' is missing a value"),
        (["p-3,nan,20,1,"], HEADER, "line 5: column 'age' holds 'nan', which is not a finite"),
        (["p-3,50,-inf,1,"], HEADER, "line 5: column 'bmi' holds '-inf', which is not a finite"),
        (["p-3,50,1e39,1,"], HEADER, "line 5: column 'bmi' holds '1e39', which is not a finite"),
        (["p-3,fifty,20,1,"], HEADER, "line 5: column 'age' holds 'fifty', not a number"),
        (["p-3,50,20,1.5,"], HEADER, "line 5: column 'outcome' holds '1.5', not a class"),
        (["p-3,50,20,-1,"], HEADER, "line 5: column 'outcome' holds '-1', not a class"),
        (["p-3,50,20,,"], HEADER, "line 5: column 'outcome' is missing a value"),
        ([",50,20,1,"], HEADER, "line 5: column 'patient' is missing a value"),
        (["p-002,50,20,1,"], HEADER, "line 5: record id 'p-002' is already on line 3"),
        (['"p\t3",50,20,1,'], HEADER, "line 5: record id .* contains a control character"),
        (["p-3,50,20,1"], HEADER, "line 5: 4 fields, the header has 5"),
        ([], "patient,age,weight,outcome,notes", "has no column 'bmi' .its columns: patient, age"),
        ([], "patient,age,bmi,outcome,age", "the header names 'age' twice"),
    ],
)
def test_a_malformed_csv_is_refused_with_its_row(
    tmp_path: Path, rows: list[str], header: str, refusal: str
) -> None:
    path = csv_file(tmp_path / "train.csv", GOOD + rows, header)
    with pytest.raises(TaskError, match=rf"^train.csv {refusal}" if "line" in refusal else refusal):
        read_table(path, SCHEMA)


def test_unusable_files_and_settings_are_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text(HEADER + "\n")
    (tmp_path / "latin.csv").write_bytes((HEADER + "\np-\xe9,1,2,1,\n").encode("latin-1"))
    for name, refusal in [
        ("empty.csv", "empty.csv is empty: it needs a header row"),
        ("header.csv", "header.csv has no rows"),
        ("latin.csv", "latin.csv: not UTF-8 text"),
    ]:
        with pytest.raises(TaskError, match=refusal):
            read_table(tmp_path / name, SCHEMA)
    node = NodeContext(data_dir=tmp_path, table=SCHEMA)
    with pytest.raises(TaskError, match=r"train.csv: no such file"):
        table_data(node)
    with pytest.raises(TaskError, match="sets no data_dir"):
        table_data(NodeContext(table=SCHEMA))
    with pytest.raises(TaskError, match=r"no \[data.table\]"):
        table_data(NodeContext(data_dir=tmp_path))
    (tmp_path / "node.toml").write_text('[data.table]\nrecord_id = "a"\nlabel = "b"\n')
    with pytest.raises(Exception, match=r"data\.table\.features: Field required"):
        load_node_config(tmp_path)


# -- Parquet --------------------------------------------------------------------------------------


def parquet_file(path: Path, columns: dict[str, list[object]]) -> Path:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


GOOD_COLUMNS: dict[str, list[object]] = {
    "patient": ["p-001", "p-002", "p-003"],
    "age": [54, 61, 38],
    "bmi": [22.5, 31.0, 27.25],
    "outcome": [1, 0, 1],
}


def test_a_parquet_file_with_text_or_integer_record_ids(tmp_path: Path) -> None:
    source = SCHEMA.model_copy(update={"format": "parquet"})
    got = read_table(parquet_file(tmp_path / "t.parquet", GOOD_COLUMNS), source)
    assert got.record_ids.tolist() == ["p-001", "p-002", "p-003"]
    assert got.x.tolist() == [[54, 22.5], [61, 31], [38, 27.25]] and got.y.tolist() == [1, 0, 1]
    numbered = parquet_file(tmp_path / "n.parquet", {**GOOD_COLUMNS, "patient": [7, 8, 9]})
    assert read_table(numbered, source).record_ids.tolist() == ["7", "8", "9"]


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"bmi": [22.5, None, 27.0]}, "row 2: column 'bmi' is missing a value"),
        ({"bmi": [22.5, 31.0, float("nan")]}, "row 3: column 'bmi' holds nan, which is not a"),
        ({"patient": ["p-1", None, "p-3"]}, "row 2: column 'patient' is missing a value"),
        ({"patient": ["p-1", "p-1", "p-3"]}, "row 2: record id 'p-1' is already on row 1"),
        ({"outcome": [1, -1, 0]}, "row 2: column 'outcome' holds -1, not a class"),
        ({"age": ["54", "61", "38"]}, "column 'age' has type string, not a number"),
        ({"outcome": [1.0, 0.0, 1.0]}, "column 'outcome' has type double; class labels are"),
        ({"patient": [1.0, 2.0, 3.0]}, "column 'patient' has type double; record ids are text"),
        ({"bmi": None}, "has no column 'bmi'"),
    ],
)
def test_a_malformed_parquet_file_is_refused_with_its_row(
    tmp_path: Path, change: dict[str, list[object] | None], refusal: str
) -> None:
    columns = {k: v for k, v in {**GOOD_COLUMNS, **change}.items() if v is not None}
    path = parquet_file(tmp_path / "t.parquet", columns)
    with pytest.raises(TaskError, match=refusal):
        read_table(path, SCHEMA.model_copy(update={"format": "parquet"}))


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as on a node without it
    with pytest.raises(TaskError, match=r"needs pyarrow on this node: pip install 'consortium\["):
        read_table(tmp_path / "t.parquet", SCHEMA.model_copy(update={"format": "parquet"}))


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow is not installed: pip install pyarrow")
    (tmp_path / "t.parquet").write_text(HEADER)
    with pytest.raises(TaskError, match=r"t\.parquet is not a readable Parquet file"):
        read_table(tmp_path / "t.parquet", SCHEMA.model_copy(update={"format": "parquet"}))


# -- image folders --------------------------------------------------------------------------------


def image(path: Path, value: int, size: tuple[int, int] = (4, 3), mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, colour).save(path)


def test_an_image_folder_gives_one_class_per_folder_and_stems_as_record_ids(
    tmp_path: Path,
) -> None:
    image(tmp_path / "train" / "cat" / "c-01.png", 255)
    image(tmp_path / "train" / "cat" / "c-02.png", 0)
    image(tmp_path / "train" / "dog" / "d-01.jpg", 51)
    image(tmp_path / "test" / "dog" / "d-99.png", 102)
    node = NodeContext(data_dir=tmp_path, images=ImageSource())
    train, test = image_data(node)
    assert train.record_ids.tolist() == ["c-01", "c-02", "d-01"]
    assert train.y.tolist() == [0, 0, 1] and test.y.tolist() == [1]
    assert train.x.shape == (3, 1, 3, 4) and train.x.dtype == np.float32
    assert train.x[0].max() == 1.0 and train.x[1].max() == 0.0
    # listed classes fix the labels even where a node holds only some of them
    named = NodeContext(data_dir=tmp_path, images=ImageSource(classes=["dog", "cat", "bird"]))
    assert image_data(named)[0].y.tolist() == [1, 1, 0]
    rgb = NodeContext(data_dir=tmp_path, images=ImageSource(channels=3, size=(8, 8)))
    assert image_data(rgb)[0].x.shape == (3, 3, 8, 8)


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ("dog/c-01.png", r"train/dog/c-01.png and .*train/cat/c-01.png have the same record id"),
        ("cat/c-01.jpg", r"train/cat/c-01.png and .*train/cat/c-01.jpg have the same record id"),
        ("cat/notes.txt", r"train/cat/notes.txt is not an image file"),
        ("bird/b-1.png", r"'bird' is not one of the classes \(cat, dog\)"),
        ("dog/big.png", r"train/dog/big.png is 5x3 pixels, .* is 4x3: set \[data.images\] size"),
        ("dog/bad.png", r"train/dog/bad.png cannot be read as an image"),
    ],
)
def test_a_malformed_image_folder_is_refused_naming_the_file(
    tmp_path: Path, extra: str, refusal: str
) -> None:
    image(tmp_path / "train" / "cat" / "c-01.png", 255)
    image(tmp_path / "train" / "dog" / "d-01.png", 0)
    path = tmp_path / "train" / extra
    if extra.endswith(".txt"):
        path.write_text("not a picture")
    elif extra.endswith("bad.png"):
        path.write_bytes(b"\x89PNG garbage")
    else:
        image(path, 9, size=(5, 3) if "big" in extra else (4, 3))
    classes = ["cat", "dog"]
    with pytest.raises(TaskError, match=refusal):
        image_data(NodeContext(data_dir=tmp_path, images=ImageSource(classes=classes)))
