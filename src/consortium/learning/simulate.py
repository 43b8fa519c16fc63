"""In-memory federated training over partitions: no network, no ledger. For tests and benchmarks."""

from __future__ import annotations

import numpy as np

from consortium.learning.adapter import get_weights, set_weights
from consortium.learning.datasets import Dataset
from consortium.learning.models import build_model
from consortium.learning.partition import partition_dirichlet, partition_iid
from consortium.learning.strategy import FedAvg, Strategy
from consortium.learning.train import TrainConfig, evaluate, train_local


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def simulate_fedavg(
    dataset: Dataset,
    n_nodes: int,
    rounds: int,
    alpha: float | None,
    model: str,
    cfg: TrainConfig,
    seed: int = 0,
    strategy: Strategy | None = None,
) -> list[float]:
    """Run `rounds` of federated training among `n_nodes` holding IID (alpha None) or
    Dirichlet(alpha) label-skewed parts; return the global model's test accuracy after each."""
    strategy = strategy or FedAvg()
    rng = np.random.default_rng(seed)
    y = dataset.y_train
    parts = (
        partition_iid(y, n_nodes, rng)
        if alpha is None
        else partition_dirichlet(y, n_nodes, alpha, rng)
    )
    global_model = build_model(model, dataset.input_shape, dataset.num_classes, seed=seed)
    local_model = build_model(model, dataset.input_shape, dataset.num_classes, seed=seed)
    global_weights = get_weights(global_model)
    node_cfg = cfg.model_copy(update=strategy.client_config())
    accuracies: list[float] = []
    for rnd in range(rounds):
        updates = []
        for node, idx in enumerate(parts):
            set_weights(local_model, global_weights)
            # A different, reproducible shuffle for every (run, round, node).
            seeded = node_cfg.model_copy(update={"seed": _seed(seed, rnd, node)})
            result = train_local(local_model, dataset.x_train[idx], y[idx], seeded, global_weights)
            updates.append((result.num_samples, get_weights(local_model)))
        global_weights = strategy.aggregate(updates)
        set_weights(global_model, global_weights)
        accuracies.append(evaluate(global_model, dataset.x_test, dataset.y_test)[1])
    return accuracies
