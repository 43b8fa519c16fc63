"""Local training and evaluation of a PyTorch model on NumPy arrays, deterministic for a seed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from consortium.core.errors import ConfigError
from consortium.learning.adapter import check_weights, get_weights


class TrainConfig(BaseModel):
    """Local training options (a node's `[train]` TOML table validates into this)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(1, ge=1, description="passes over the local data per round")
    batch_size: int = Field(32, ge=1, description="samples per gradient step")
    lr: float = Field(0.05, gt=0.0, description="learning rate")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd or adam")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum")
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx term mu/2*||w - w_global||^2")
    seed: int = Field(0, description="seeds the shuffling of batches")


@dataclass(frozen=True)
class TrainResult:
    num_samples: int
    loss: float  # mean data loss (without the proximal term) over the last epoch
    #: A task's own figures from training (e.g. a NumPy client's fit metrics): kept on the node.
    metrics: Mapping[str, float] = field(default_factory=dict)


def _tensors(
    x: npt.NDArray[np.floating], y: npt.NDArray[np.integer]
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"features {x.shape} and labels {y.shape} do not line up")
    if len(y) == 0:
        raise ConfigError("no samples to train or evaluate on")
    # Integer labels (classification) as int64; float targets (a task's own loss) as float32.
    target = np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=target)),
    )


#: A loss of (outputs, targets), averaged over the batch; the default is cross-entropy.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def train_local(
    model: nn.Module,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    cfg: TrainConfig,
    global_weights: Mapping[str, npt.NDArray[np.float32]] | None = None,
    *,
    loss: Loss | None = None,
    optimizer: Callable[[nn.Module, TrainConfig], torch.optim.Optimizer] | None = None,
) -> TrainResult:
    """Train `model` in place on (x, y) with `loss` (default cross-entropy) and `optimizer`
    (default SGD or Adam as `cfg` says). With proximal_mu > 0 (FedProx) the loss gains
    mu/2 * ||w - w_global||^2, w_global being `global_weights` or, if None, the starting weights."""
    loss_fn = loss or nn.functional.cross_entropy
    xt, yt = _tensors(x, y)
    anchor: dict[str, torch.Tensor] = {}
    if cfg.proximal_mu > 0.0:
        start = get_weights(model)
        ref = start if global_weights is None else check_weights(global_weights, start)
        anchor = {name: torch.from_numpy(ref[name].copy()) for name, _ in model.named_parameters()}
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = (optimizer or default_optimizer)(model, cfg)
    model.train()
    n = len(yt)
    total = 0.0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start_at in range(0, n, cfg.batch_size):
            batch = order[start_at : start_at + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            data_loss = loss_fn(model(xt[batch]), yt[batch])
            total_loss: torch.Tensor = data_loss
            if anchor:
                prox = torch.stack(
                    [((p - anchor[name]) ** 2).sum() for name, p in model.named_parameters()]
                ).sum()
                total_loss = data_loss + 0.5 * cfg.proximal_mu * prox
            total_loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch 2.13
            opt.step()
            total += float(data_loss.detach()) * len(batch)
    return TrainResult(num_samples=n, loss=total / n)


def evaluate(
    model: nn.Module,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    batch_size: int = 1024,
    *,
    loss: Loss | None = None,
) -> tuple[float, float]:
    """Mean loss (default cross-entropy) and accuracy of `model` on (x, y); the accuracy is
    NaN for float targets."""
    xt, yt = _tensors(x, y)
    model.eval()
    loss_sum = 0.0
    correct = 0
    with torch.no_grad():
        for i in range(0, len(yt), batch_size):
            logits = model(xt[i : i + batch_size])
            target = yt[i : i + batch_size]
            if loss is None:
                loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            else:
                loss_sum += float(loss(logits, target)) * len(target)
            if not target.is_floating_point():
                correct += int((logits.argmax(dim=1) == target).sum())
    accuracy = float("nan") if yt.is_floating_point() else correct / len(yt)
    return loss_sum / len(yt), accuracy


def predict(model: nn.Module, x: npt.NDArray[np.floating], batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs on x, in evaluation mode, without gradients."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model.eval()
    with torch.no_grad():
        return torch.cat([model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)])
