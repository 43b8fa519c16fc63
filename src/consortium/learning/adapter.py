"""PyTorch adapter: a model's weights as named float32 NumPy tensors, and as one flat vector.

Weights arriving from peers are hostile input: `set_weights` and `unflatten` check names, shapes,
dtypes and finiteness before anything touches the model. Key order is always the sorted names, so
two nodes flatten the same model to vectors that line up element by element.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from consortium.core.errors import ModelError

Weights = dict[str, npt.NDArray[np.float32]]


def get_weights(model: nn.Module) -> Weights:
    """Copy every tensor of the model's state (parameters and buffers) out, sorted by name."""
    state = model.state_dict()
    out: Weights = {}
    for name in sorted(state):
        tensor = state[name]
        if tensor.dtype != torch.float32:
            raise ModelError(f"model tensor {name!r} is {tensor.dtype}; only float32 is supported")
        out[name] = tensor.detach().cpu().numpy().copy()
    return out


def check_weights(weights: Mapping[str, object], like: Mapping[str, np.ndarray]) -> Weights:
    """Return `weights` as a sorted Weights dict if it matches `like` exactly, else raise."""
    if not isinstance(weights, Mapping):
        raise ModelError(f"weights must be a mapping of names to arrays, got {type(weights)}")
    missing = sorted(set(like) - set(weights))
    extra = sorted(set(weights) - set(like))
    if missing or extra:
        raise ModelError(f"weight names do not match the model: missing {missing}, extra {extra}")
    out: Weights = {}
    for name in sorted(like):
        value = weights[name]
        if not isinstance(value, np.ndarray):
            raise ModelError(f"weight {name!r} is a {type(value).__name__}, not a NumPy array")
        if value.dtype != np.float32:
            raise ModelError(f"weight {name!r} has dtype {value.dtype}, expected float32")
        if value.shape != like[name].shape:
            raise ModelError(
                f"weight {name!r} has shape {value.shape}, expected {like[name].shape}"
            )
        if not np.isfinite(value).all():
            raise ModelError(f"weight {name!r} contains NaN or infinity")
        out[name] = value
    return out


def set_weights(model: nn.Module, weights: Mapping[str, object]) -> None:
    """Load `weights` into the model in place, after checking them against its state."""
    state = model.state_dict()
    like = {name: np.empty(tuple(t.shape), dtype=np.float32) for name, t in state.items()}
    checked = check_weights(weights, like)
    with torch.no_grad():
        for name, value in checked.items():
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def flatten(weights: Mapping[str, npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Concatenate the tensors, in sorted-name order, into one float32 vector."""
    if not weights:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.ravel(weights[name]) for name in sorted(weights)]).astype(
        np.float32, copy=False
    )


def unflatten(vector: npt.NDArray[np.floating], like: Mapping[str, np.ndarray]) -> Weights:
    """Cut a flat vector back into tensors shaped like `like` (sorted-name order), as float32."""
    if not isinstance(vector, np.ndarray) or vector.ndim != 1:
        raise ModelError("a flat weight vector must be a one-dimensional NumPy array")
    if not np.issubdtype(vector.dtype, np.floating):
        raise ModelError(f"a flat weight vector must be floating point, got {vector.dtype}")
    names = sorted(like)
    sizes = [int(like[name].size) for name in names]
    if vector.size != sum(sizes):
        raise ModelError(f"flat vector has {vector.size} values, the model has {sum(sizes)}")
    if not np.isfinite(vector).all():
        raise ModelError("flat weight vector contains NaN or infinity")
    chunks = np.split(vector.astype(np.float32), np.cumsum(sizes)[:-1])
    return {
        name: chunk.reshape(like[name].shape) for name, chunk in zip(names, chunks, strict=True)
    }


def num_parameters(weights: Mapping[str, np.ndarray]) -> int:
    """How many scalars a flattened copy of `weights` holds."""
    return sum(int(w.size) for w in weights.values())
