"""The learning side of a node: its private shard, local training and aggregation.

This is the only path from a node's data to training (the consent issue hooks its filter here).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError
from consortium.learning import (
    TrainConfig,
    build_model,
    evaluate,
    get_strategy,
    get_weights,
    load_dataset,
    partition_dirichlet,
    partition_iid,
    set_weights,
    train_local,
)
from consortium.learning.adapter import Weights, flatten
from consortium.learning.datasets import Dataset
from consortium.learning.serialize import add_flat_delta, weights_from_bytes, weights_to_bytes
from consortium.node.config import DataConfig, RunConfig
from consortium.privacy.accounting import record_sample_rate, record_steps_per_round
from consortium.privacy.dpsgd import train_local_dp


def node_shard(data: DataConfig, dataset: Dataset) -> np.ndarray:
    """Indices of the training examples this node holds."""
    y = dataset.y_train
    if data.partition == "all" or data.parts == 1:
        return np.arange(len(y))
    rng = np.random.default_rng(data.seed)
    parts = (
        partition_iid(y, data.parts, rng)
        if data.partition == "iid"
        else partition_dirichlet(y, data.parts, data.alpha, rng)
    )
    if data.index >= data.parts:
        raise ConfigError(f"shard index {data.index} out of range for {data.parts} parts")
    return np.asarray(parts[data.index])


def initial_weights(run: RunConfig, dataset: Dataset) -> Weights:
    model = build_model(run.model, dataset.input_shape, dataset.num_classes, seed=run.seed)
    return get_weights(model)


class Learner:
    def __init__(self, data: DataConfig, run: RunConfig, dataset: Dataset | None = None) -> None:
        self.run = run
        data_dir = Path(data.data_dir) if data.data_dir else None
        ds = dataset or load_dataset(run.dataset, data_dir, seed=data.seed)
        self.dataset = ds
        idx = node_shard(data, ds)
        rng = np.random.default_rng(data.seed + 7919 * (data.index + 1))
        idx = rng.permutation(idx)
        n_val = len(idx) // 10  # a held-out tenth for local metrics; none for tiny shards
        #: Record ids (rows of the dataset's training split) this node holds: the ids consent
        #: is granted for. Only `train` reads the rows, and only those a round selected.
        self.record_ids = np.sort(idx)
        self._val_ids, self._train_ids = idx[:n_val], idx[n_val:]
        self.model = build_model(run.model, ds.input_shape, ds.num_classes, seed=run.seed)
        self.like = get_weights(self.model)
        #: `train` runs in worker threads and trains the one `model` in place: a node that
        #: resumed mid-round and then received that round's commit starts the next round's
        #: training while the stale one still runs, and two threads in one module's autograd
        #: corrupt memory (a restarted node segfaulted in `bench chaos`). One at a time.
        self.training = threading.Lock()
        self.strategy = get_strategy(
            run.strategy, **({"mu": run.mu} if run.strategy == "fedprox" else {})
        )
        self.cfg = TrainConfig(
            epochs=run.epochs,
            batch_size=run.batch_size,
            lr=run.lr,
            optimizer=run.optimizer,
            momentum=run.momentum,
            proximal_mu=self.strategy.client_config().get("proximal_mu", 0.0),
            seed=run.seed,
        )

    def _rows(self, ids: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        return ids if allowed is None else ids[np.isin(ids, allowed)]

    def train_count(self, allowed: np.ndarray | None) -> int:
        """How many training rows a round with this consent selection uses."""
        return len(self._rows(self._train_ids, allowed))

    def record_dp(self, n: int, noise_multiplier: float) -> tuple[float, float, int]:
        """(z, q, steps) of one round of DP-SGD on n records (what the node reports)."""
        b, e = self.cfg.batch_size, self.cfg.epochs
        return noise_multiplier, record_sample_rate(n, b), record_steps_per_round(n, b, e)

    def train(
        self,
        global_model: bytes,
        round_no: int,
        allowed: np.ndarray | None = None,
        dp_noise: float | None = None,
    ) -> tuple[int, bytes, dict[str, Any]]:
        """Train from the global model on the rows in `allowed` (the records whose consent
        covers this round; None: every row), with DP-SGD at noise multiplier `dp_noise` when
        record-level privacy is on; return (samples, update bytes, metrics). Thread-safe: calls
        run one after another."""
        with self.training:
            return self._train(global_model, round_no, allowed, dp_noise)

    def _train(
        self,
        global_model: bytes,
        round_no: int,
        allowed: np.ndarray | None,
        dp_noise: float | None,
    ) -> tuple[int, bytes, dict[str, Any]]:
        ds = self.dataset
        train_ids = self._rows(self._train_ids, allowed)
        val_ids = self._rows(self._val_ids, allowed)
        if len(train_ids) == 0:
            raise ConfigError(f"no consented training records for round {round_no}")
        if len(val_ids) == 0:
            val_ids = train_ids
        weights = weights_from_bytes(global_model, self.like)
        set_weights(self.model, weights)
        _, acc = evaluate(self.model, ds.x_train[val_ids], ds.y_train[val_ids])
        cfg = self.cfg.model_copy(update={"seed": self.run.seed * 100_003 + round_no})
        x, y = ds.x_train[train_ids], ds.y_train[train_ids]
        metrics: dict[str, Any] = {"accuracy": float(acc)}
        if dp_noise is None:
            res = train_local(self.model, x, y, cfg, global_weights=weights)
            metrics["loss"], n = float(res.loss), res.num_samples
        else:
            dp = train_local_dp(
                self.model, x, y, cfg, self.run.privacy, dp_noise, global_weights=weights
            )
            metrics["loss"], n = float(dp.loss), dp.num_samples
            z, q, steps = self.record_dp(len(train_ids), dp_noise)
            metrics["dp"] = {"noise_multiplier": z, "sample_rate": q, "steps": steps}
        update = weights_to_bytes(get_weights(self.model))
        return n, update, metrics

    @property
    def model_size(self) -> int:
        return int(flatten(self.like).size)

    def delta(self, global_model: bytes, local_model: bytes) -> npt.NDArray[np.float32]:
        """local - global as one flat vector (sorted parameter names), shape-checked."""
        g = flatten(weights_from_bytes(global_model, self.like))
        local = flatten(weights_from_bytes(local_model, self.like))
        out: npt.NDArray[np.float32] = local - g
        return out

    def apply(self, global_model: bytes, delta: npt.NDArray[np.float64]) -> bytes:
        return add_flat_delta(global_model, delta)

    def aggregate(self, updates: Sequence[tuple[str, int, bytes]]) -> bytes:
        """FedAvg/FedProx of the participants' weights (shape-checked against the model)."""
        parsed = [(n, weights_from_bytes(u, self.like)) for _, n, u in updates]
        return weights_to_bytes(self.strategy.aggregate(parsed))
