"""Split a dataset's indices among nodes: IID, or label-skewed by a Dirichlet(alpha) draw.

Every function takes a seeded `numpy.random.Generator`, uses every index exactly once, and leaves no
part empty, so a simulation with the same seed gives the same split.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError

IndexArray = npt.NDArray[np.int64]

_MAX_TRIES = 100


def _check(y: npt.NDArray[np.integer], n_parts: int, min_size: int) -> None:
    if y.ndim != 1:
        raise ConfigError(f"labels must be one-dimensional, got shape {y.shape}")
    if n_parts < 1:
        raise ConfigError(f"number of parts must be at least 1, got {n_parts}")
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}")
    if n_parts * min_size > len(y):
        raise ConfigError(
            f"cannot give {n_parts} parts at least {min_size} samples each from {len(y)} samples"
        )


def partition_iid(
    y: npt.NDArray[np.integer], n_parts: int, rng: np.random.Generator
) -> list[IndexArray]:
    """Shuffle and cut into `n_parts` parts whose sizes differ by at most one."""
    _check(y, n_parts, 1)
    order = rng.permutation(len(y)).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, n_parts)]


def _dirichlet_once(
    y: npt.NDArray[np.integer], n_parts: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    pieces: list[list[IndexArray]] = [[] for _ in range(n_parts)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(n_parts, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for part, chunk in zip(pieces, np.split(idx, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in pieces]


def _top_up(parts: list[IndexArray], min_size: int, rng: np.random.Generator) -> list[IndexArray]:
    """Move random samples from the largest part to any part below min_size."""
    parts = list(parts)
    for i in range(len(parts)):
        while len(parts[i]) < min_size:
            donor = int(np.argmax([len(p) for p in parts]))
            need = min(min_size - len(parts[i]), len(parts[donor]) - min_size)
            take = rng.choice(len(parts[donor]), size=need, replace=False)
            moved = parts[donor][take]
            parts[donor] = np.delete(parts[donor], take)
            parts[i] = np.sort(np.concatenate([parts[i], moved]))
    return parts


def partition_dirichlet(
    y: npt.NDArray[np.integer],
    n_parts: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[IndexArray]:
    """Label skew: for each class, split its samples among parts by a Dirichlet(alpha) draw.

    Smaller alpha means more skew (alpha -> infinity approaches IID). Draws are redone until every
    part holds at least `min_size` samples; after 100 tries (tiny alpha, many parts) the smallest
    parts are topped up from the largest, so the call always returns.
    """
    _check(y, n_parts, min_size)
    if not alpha > 0.0 or not np.isfinite(alpha):
        raise ConfigError(f"Dirichlet alpha must be a positive number, got {alpha}")
    parts: list[IndexArray] = []
    for _ in range(_MAX_TRIES):
        parts = _dirichlet_once(y, n_parts, alpha, rng)
        if min(len(p) for p in parts) >= min_size:
            return parts
    return _top_up(parts, min_size, rng)


def label_skew(y: npt.NDArray[np.integer], parts: list[IndexArray]) -> float:
    """Mean total-variation distance between each part's label mix and the global one (0 = IID)."""
    labels, y_codes = np.unique(y, return_inverse=True)
    n_classes = len(labels)
    owner = np.empty(len(y), dtype=np.int64)
    for i, part in enumerate(parts):
        owner[part] = i
    counts = np.bincount(owner * n_classes + y_codes, minlength=len(parts) * n_classes)
    counts = counts.reshape(len(parts), n_classes).astype(np.float64)
    local = counts / counts.sum(axis=1, keepdims=True)
    overall = np.bincount(y_codes, minlength=n_classes) / len(y)
    return float(0.5 * np.abs(local - overall).sum(axis=1).mean())
