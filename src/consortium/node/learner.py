"""The learning side of a node: its private shard, local training and aggregation.

This is the only path from a node's data to training (the consent issue hooks its filter here).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError
from consortium.learning import TrainConfig, get_strategy, get_weights, set_weights, train_local
from consortium.learning.adapter import Weights, flatten
from consortium.learning.serialize import add_flat_delta, weights_from_bytes, weights_to_bytes
from consortium.learning.task import (
    Examples,
    Task,
    TaskError,
    build_model,
    evaluate_task,
    load_data,
    make_model,
    train_task,
)
from consortium.node.config import DataConfig, RunConfig, record_dp_refusal
from consortium.privacy.accounting import record_sample_rate, record_steps_per_round
from consortium.privacy.dpsgd import train_local_dp


def initial_weights(run: RunConfig, task: Task) -> Weights:
    """The run's starting model: the task's model under the run's seed (equal on every node)."""
    return build_model(task, run.seed)[1]


class Learner:
    def __init__(
        self, data: DataConfig, run: RunConfig, task: Task | None = None, name: str = ""
    ) -> None:
        self.run = run
        self.task = task or run.load_task()
        train, self.test = load_data(self.task, data.context(name))
        self.examples = train
        rng = np.random.default_rng(data.seed + 7919 * (data.index + 1))
        order = rng.permutation(len(train)).astype(np.int64)
        n_val = len(order) // 10  # a held-out tenth for local metrics; none for tiny shards
        #: Record ids this node holds (for built-in tasks: rows of the dataset's training split):
        #: the ids consent is granted for. Only `train` reads the examples, and only those a
        #: round selected.
        self.record_ids = np.sort(train.record_ids)
        self._val_pos, self._train_pos = order[:n_val], order[n_val:]
        why = record_dp_refusal(run, self.task, make_model(self.task, run.seed))
        if why:  # refused at the vote too; checked again here, never in the middle of a run
            raise TaskError(f"{why} [rule task-dp]")
        self.model, self.like = build_model(self.task, run.seed)
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

    def _rows(self, positions: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        """The positions among `positions` whose record id is in `allowed` (None: all)."""
        if allowed is None:
            return positions
        return positions[np.isin(self.examples.record_ids[positions], allowed)]

    def train_count(self, allowed: np.ndarray | None) -> int:
        """How many training examples a round with this consent selection uses."""
        return len(self._rows(self._train_pos, allowed))

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
        train_pos = self._rows(self._train_pos, allowed)
        val_pos = self._rows(self._val_pos, allowed)
        if len(train_pos) == 0:
            raise ConfigError(f"no consented training records for round {round_no}")
        if len(val_pos) == 0:
            val_pos = train_pos
        weights = weights_from_bytes(global_model, self.like)
        set_weights(self.model, weights)
        before = evaluate_task(self.task, self.model, self.examples.take(val_pos))
        cfg = self.cfg.model_copy(update={"seed": self.run.seed * 100_003 + round_no})
        train: Examples = self.examples.take(train_pos)
        metrics: dict[str, Any] = {k: v for k, v in before.items() if k == "accuracy"}
        if dp_noise is None:
            if self.task.train is None:  # the default trainer
                res = train_local(
                    self.model,
                    train.x,
                    train.y,
                    cfg,
                    global_weights=weights,
                    loss=self.task.loss,
                    optimizer=self.task.optimizer,
                )
            else:
                res = train_task(self.task, self.model, train, cfg, weights)
            # The node's count of consented records weighs the update, never what a task's own
            # trainer says it used (a NumPy client's num_examples is its own claim).
            metrics["loss"], n = float(res.loss), len(train)
            if res.metrics:  # local metrics never leave the node (`round.published_metrics`)
                metrics["task"] = dict(res.metrics)
        else:
            dp = train_local_dp(
                self.model,
                train.x,
                train.y,
                cfg,
                self.run.privacy,
                dp_noise,
                global_weights=weights,
            )
            metrics["loss"], n = float(dp.loss), len(train)
            z, q, steps = self.record_dp(len(train_pos), dp_noise)
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
