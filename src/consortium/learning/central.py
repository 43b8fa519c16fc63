"""The comparison point: the same model trained on all the data pooled in one place."""

from __future__ import annotations

from consortium.learning.datasets import Dataset
from consortium.learning.models import build_model
from consortium.learning.train import TrainConfig, evaluate, train_local


def train_centralized(
    dataset: Dataset, model_name: str, epochs: int, cfg: TrainConfig, seed: int = 0
) -> float:
    """Train `model_name` for `epochs` passes over the pooled training set; test accuracy."""
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, seed=seed)
    train_local(
        model,
        dataset.x_train,
        dataset.y_train,
        cfg.model_copy(update={"epochs": epochs, "seed": seed, "proximal_mu": 0.0}),
    )
    return evaluate(model, dataset.x_test, dataset.y_test)[1]
