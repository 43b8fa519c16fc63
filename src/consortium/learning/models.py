"""Small models that train in seconds on a CPU: a logistic regression, an MLP and a CNN."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from consortium.core.errors import ConfigError

_HIDDEN = 64


def _logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), _HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, num_classes),
    )


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ConfigError(
            f"the cnn model needs image input (channels, height, width) of at least 4x4, "
            f"got {input_shape}; use --model mlp for tabular data"
        )
    channels = input_shape[0]
    # Adaptive pooling fixes the head's size, so the same net fits 8x8 digits and 28x28 images.
    return nn.Sequential(
        nn.Conv2d(channels, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, _HIDDEN),
        nn.ReLU(),
        nn.Linear(_HIDDEN, num_classes),
    )


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "logreg": _logreg,
    "mlp": _mlp,
    "cnn": _cnn,
}


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int | None = None
) -> nn.Module:
    """Build a model by name. With `seed`, initial weights depend on it alone (torch's global RNG
    is left as it was); without, they come from the global RNG (`torch.manual_seed`)."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}"
        ) from None
    if num_classes < 2 or not input_shape or min(input_shape) < 1:
        raise ConfigError(f"bad model shape: input {input_shape}, {num_classes} classes")
    if seed is None:
        return factory(tuple(input_shape), num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(tuple(input_shape), num_classes)
