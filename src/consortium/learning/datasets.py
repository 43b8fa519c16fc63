"""Datasets that load offline: scikit-learn's bundled ones and Fashion-MNIST from local IDX files.

Nothing is ever downloaded: Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (or
any directory holding the four gzip IDX files).
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_IDX_UBYTE = 0x08
_IDX_MAX_DIMS = 4


@dataclass(frozen=True)
class Dataset:
    """A train/test split. X has shape (n, *input_shape), float32, normalised; y is int64."""

    name: str
    x_train: FloatArray
    y_train: IntArray
    x_test: FloatArray
    y_test: IntArray
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def num_features(self) -> int:
        return math.prod(self.input_shape)


def read_idx(path: Path, *, ndim: int) -> npt.NDArray[np.uint8]:
    """Read a gzip IDX file of unsigned bytes with `ndim` dimensions, checking header and size."""
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] != _IDX_UBYTE:
                raise ConfigError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
            if header[3] != ndim or ndim > _IDX_MAX_DIMS:
                raise ConfigError(f"{path}: expected {ndim} dimensions, header says {header[3]}")
            raw_dims = fh.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise ConfigError(f"{path}: truncated IDX header")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
            size = math.prod(dims)
            # Read at most one byte more than announced: a lying header cannot make us inflate more.
            body = fh.read(size + 1)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise ConfigError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(body) != size:
        raise ConfigError(f"{path}: header announces {size} bytes of data, file holds {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _split_indices(
    n: int, test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded shuffle, then (train indices, test indices)."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    n_test = max(1, round(n * test_fraction))
    return order[n_test:], order[:n_test]


def _digits(data_dir: Path | None, test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _split_indices(len(y), test_fraction, seed)
    return Dataset("digits", x[train], y[train], x[test], y[test], (1, 8, 8), 10)


def _breast_cancer(data_dir: Path | None, test_fraction: float, seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _split_indices(len(y), test_fraction, seed)
    # Standardise with training statistics only, so nothing leaks from the test split.
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0
    xs = ((x - mean) / std).astype(np.float32)
    return Dataset("breast_cancer", xs[train], y[train], xs[test], y[test], (30,), 2)


def _fashion_mnist(data_dir: Path | None, test_fraction: float, seed: int) -> Dataset:
    root = FASHION_MNIST_DIR if data_dir is None else Path(data_dir)
    paths = {key: root / name for key, name in _FASHION_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise ConfigError(
            f"Fashion-MNIST files missing in {root}: {', '.join(missing)}; "
            "run `apt-get install dataset-fashion-mnist` or pass --data-dir DIR"
        )
    parts: dict[str, npt.NDArray[np.uint8]] = {
        key: read_idx(path, ndim=3 if key.endswith("images") else 1) for key, path in paths.items()
    }
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise ConfigError(
                f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if images.shape[1:] != (28, 28):
            raise ConfigError(f"Fashion-MNIST {split}: images are {images.shape[1:]}, not 28x28")
        if labels.size and int(labels.max()) >= 10:
            raise ConfigError(f"Fashion-MNIST {split}: label {int(labels.max())} out of range 0-9")

    def scaled(key: str) -> FloatArray:
        return (parts[key].astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset(
        "fashion-mnist",
        scaled("train_images"),
        parts["train_labels"].astype(np.int64),
        scaled("test_images"),
        parts["test_labels"].astype(np.int64),
        (1, 28, 28),
        10,
    )


DATASETS: dict[str, Callable[[Path | None, float, int], Dataset]] = {
    "digits": _digits,
    "breast_cancer": _breast_cancer,
    "fashion-mnist": _fashion_mnist,
}


def load_dataset(
    name: str = "digits",
    data_dir: Path | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name. Fashion-MNIST keeps its own split (test_fraction is ignored)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(data_dir, test_fraction, seed)
