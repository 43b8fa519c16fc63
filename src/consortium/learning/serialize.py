"""Weights to and from bytes with safetensors (never pickle: loading peer bytes runs no code)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load, save

from consortium.core.errors import ModelError
from consortium.learning.adapter import Weights, check_weights, flatten, unflatten


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


def add_flat_delta(model: bytes, delta: npt.NDArray[np.floating]) -> bytes:
    """The model plus a flat delta (parameters in sorted-name order), as safetensors bytes.

    Used by the leader after secure aggregation and by the auditor to recompute the same bytes,
    so it must stay a pure, deterministic function of its inputs.
    """
    weights = weights_from_bytes(model)
    flat = flatten(weights)
    if delta.shape != flat.shape:
        raise ModelError(f"delta has {delta.size} values, the model has {flat.size} parameters")
    new = (flat.astype(np.float64) + np.asarray(delta, dtype=np.float64)).astype(np.float32)
    return weights_to_bytes(unflatten(new, weights))
