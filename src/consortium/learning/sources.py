"""Where a node's own data is and what it looks like: `[data.table]` and `[data.images]` in
node.toml, read by `consortium.learning.loaders` (the schema is node-local: it never goes in the
run configuration, so each member describes its own files)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TableSource(BaseModel):
    """A table of records, one per row (`[data.table]`): CSV with a header row, or Parquet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["csv", "parquet"] = Field("csv", description="csv | parquet")
    train: str = Field("train.csv", description="training file, relative to data_dir")
    test: str = Field("test.csv", description="test file, relative to data_dir")
    record_id: str = Field(..., min_length=1, description="column of record ids (text)")
    features: list[str] = Field(..., min_length=1, description="feature columns (numbers)")
    label: str = Field(..., min_length=1, description="label column")
    label_type: Literal["class", "float"] = Field(
        "class", description="class: integer labels 0, 1, …; float: float32 targets"
    )

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a feature column is named twice")
        return value

    def columns(self) -> list[str]:
        """Every column the schema names."""
        return [self.record_id, *self.features, self.label]


class ImageSource(BaseModel):
    """Images in one folder per class (`[data.images]`); each file's stem is its record id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train: str = Field("train", description="training folder, relative to data_dir")
    test: str = Field("test", description="test folder, relative to data_dir")
    classes: list[str] = Field(
        default_factory=list,
        description="class folders in label order (empty: the training folder's, sorted); "
        "members must list the same classes when they do not all hold every class",
    )
    size: tuple[int, int] | None = Field(
        None, description="(height, width) to resize to; none: all images must be one size"
    )
    channels: Literal[1, 3] = Field(1, description="1: grayscale; 3: RGB")

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("height and width must be at least 1")
        return value
