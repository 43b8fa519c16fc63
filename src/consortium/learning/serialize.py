"""Weights to and from bytes with safetensors (never pickle: loading peer bytes runs no code)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load, save

from consortium.core.errors import ModelError
from consortium.learning.adapter import Weights, check_weights


def weights_to_bytes(weights: Mapping[str, npt.NDArray[np.float32]]) -> bytes:
    """Serialise named float32 tensors; the same weights always give the same bytes."""
    data: bytes = save({name: np.ascontiguousarray(weights[name]) for name in sorted(weights)})
    return data


def weights_from_bytes(data: bytes, like: Mapping[str, np.ndarray] | None = None) -> Weights:
    """Parse safetensors bytes; with `like`, also require exactly those names and shapes."""
    try:
        loaded: dict[str, np.ndarray] = load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise ModelError(f"weights are not valid safetensors bytes: {exc}") from exc
    return check_weights(loaded, like if like is not None else loaded)
