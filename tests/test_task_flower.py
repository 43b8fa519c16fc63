"""Flower-style NumPy clients as tasks (issue 14, item 6): a client written to the signatures of
Flower's `NumPyClient` (a NumPy logistic regression in the shape of Flower's quickstart, our own
code, no flwr) trains on the digits the project ships over three in-process nodes; the clients'
claimed `num_examples` are ignored (the record's sample counts are the nodes' consented records)
and their metrics never leave the node; the client sees only consented records; record-level DP
is refused for it by name; bad client output is one clear error."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consortium.learning import set_weights
from consortium.learning.flower import ClientParameters, numpy_client_task
from consortium.learning.serialize import weights_from_bytes, weights_to_bytes
from consortium.learning.task import (
    Examples,
    NodeContext,
    TaskError,
    build_model,
    evaluate_task,
    load_data,
    load_task,
)
from consortium.learning.train import TrainConfig
from consortium.node.config import DataConfig, RunConfig, task_refusals
from consortium.node.learner import Learner
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.record import run_records
from consortium.protocol.round import published_metrics
from consortium.store.objects import get_bytes
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.task_site import task_site, write_task_package

#: The engineer's package: a client with Flower NumPyClient's methods and return values, as in
#: Flower's scikit-learn logistic-regression quickstart (softmax regression in NumPy here), on
#: the digits the project ships, sharded by node; record ids "digit-<row>". Every client lies
#: about num_examples, and reports a metric that must stay on its node.
TASK_SOURCE = '''
import numpy as np

from consortium.learning.datasets import load_dataset
from consortium.learning.flower import numpy_client_task
from consortium.learning.task import Examples, NodeContext

N_FEATURES, N_CLASSES = 64, 10
SEEN: list[list[str]] = []  # the record ids each client was built on (the test reads them)


class LogRegClient:
    """Flower's NumPyClient methods: get_parameters(config), fit(parameters, config),
    evaluate(parameters, config), on lists of NumPy arrays."""

    def __init__(self, x, y):
        self.x, self.y = x.reshape(len(x), -1).astype(np.float64), y
        self.w, self.b = np.zeros((N_CLASSES, N_FEATURES)), np.zeros(N_CLASSES)

    def get_parameters(self, config):
        return [self.w, self.b]

    def _set(self, parameters):
        self.w, self.b = (np.array(p, dtype=np.float64) for p in parameters)

    def _probs(self, x):
        z = x @ self.w.T + self.b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def fit(self, parameters, config):
        self._set(parameters)
        rng = np.random.default_rng(int(config["seed"]))
        lr, batch = float(config["lr"]), int(config["batch_size"])
        for _ in range(int(config["epochs"])):
            order = rng.permutation(len(self.y))
            for s in range(0, len(order), batch):
                i = order[s : s + batch]
                g = self._probs(self.x[i])
                g[np.arange(len(i)), self.y[i]] -= 1.0
                self.w -= 5 * lr * g.T @ self.x[i] / len(i)
                self.b -= 5 * lr * g.mean(axis=0)
        loss, _, metrics = self.evaluate(self.get_parameters({}), {})
        claimed = 1_000_000  # a lie: the node must weigh by its own count
        return self.get_parameters({}), claimed, {"train_accuracy": metrics["accuracy"],
                                                  "loss": loss, "note": "text is dropped"}

    def evaluate(self, parameters, config):
        self._set(parameters)
        p = self._probs(self.x)
        loss = float(-np.log(p[np.arange(len(self.y)), self.y] + 1e-12).mean())
        return loss, 7, {"accuracy": float((p.argmax(axis=1) == self.y).mean())}


def client_fn(examples: Examples) -> LogRegClient:
    SEEN.append(examples.record_ids.tolist())
    return LogRegClient(examples.x, examples.y)


def data(node: NodeContext) -> tuple[Examples, Examples]:
    ds = load_dataset("digits", None, seed=0)
    rows = np.arange(len(ds.y_train))[node.index :: node.parts]
    ids = np.array([f"digit-{r}" for r in rows], dtype=object)
    test_ids = np.array([f"test-{r}" for r in range(len(ds.y_test))], dtype=object)
    test = Examples(ds.x_test, ds.y_test, test_ids)
    return Examples(ds.x_train[rows], ds.y_train[rows], ids), test


task = numpy_client_task(
    "digits-logreg",
    client_fn=client_fn,
    data=data,
    initial_parameters=lambda rng: [np.zeros((N_CLASSES, N_FEATURES)), np.zeros(N_CLASSES)],
)
'''

TASK = "flowerlogreg.task:task"


@pytest.fixture
def task_root(tmp_path: Path) -> Iterator[Path]:
    """The task package, in a folder outside the repository on sys.path (forgotten after)."""
    with task_site(tmp_path / "site") as root:
        write_task_package(root, "flowerlogreg", TASK_SOURCE)
        yield root


def test_a_numpy_client_trains_over_three_nodes_weighted_by_their_records(
    tmp_path: Path, task_root: Path
) -> None:
    run = run_config(4).model_copy(update={"task": TASK, "task_hash": ""})

    async def go() -> tuple[float, list[dict[str, int]], list[dict[str, object]]]:
        nodes, net, clock = await cluster(tmp_path / "run", 3, seed=81, consent=False)
        try:
            await start(nodes, run)
            await drive(nodes, net, clock)
            records = run_records(nodes[0].ledger)
            assert [r.round for r in records] == [1, 2, 3, 4]
            assert all(len(r.participants) == 3 for r in records)
            task = load_task(TASK)
            model, like = build_model(task, run.seed)
            set_weights(
                model, weights_from_bytes(get_bytes(nodes[0].store, records[-1].model), like)
            )
            test = load_data(task, NodeContext())[1]
            accuracy = evaluate_task(task, model, test)["accuracy"]
            counts = {n.identity.node_id: n.learner.train_count(None) for n in nodes if n.learner}
            return (
                accuracy,
                [dict(r.samples) for r in records] + [counts],
                [dict(m) for r in records for m in r.metrics.values()],
            )
        finally:
            for n in nodes:
                await n.stop()

    accuracy, samples, metrics = asyncio.run(go())
    # Flower's quickstart reaches about 0.9 on digits; 4 rounds of 2 local epochs get there.
    assert accuracy > 0.85, accuracy
    counts = samples.pop()
    # Every client claimed 1,000,000 examples; each round weighs a node by its own count of the
    # records it trained (its shard less the held-out tenth).
    assert all(s == counts for s in samples), (samples, counts)
    assert set(counts.values()) <= {431, 432}
    # What the clients reported (accuracy, loss, their own keys) is nowhere in the records.
    assert all(set(m) <= {"dp"} for m in metrics), metrics


def test_the_client_sees_only_consented_records_and_its_metrics_stay_local(
    task_root: Path,
) -> None:
    run = RunConfig(task=TASK, epochs=1, lr=0.1).pinned()
    learner = Learner(DataConfig(partition="iid", parts=3, index=1), run, name="n1")
    module = sys.modules["flowerlogreg.task"]
    allowed = np.sort(learner.record_ids)[::2]  # half the subjects consent
    module.SEEN.clear()
    start = weights_to_bytes(build_model(learner.task, run.seed)[1])
    n, update, metrics = learner.train(start, 1, allowed)
    fitted = module.SEEN[-1]  # the client fit() ran on (the one before evaluated the model)
    assert set(fitted) <= set(allowed.tolist()) and n == len(fitted) == learner.train_count(allowed)
    assert n != 1_000_000
    assert metrics["task"]["train_accuracy"] > 0.5 and "note" not in metrics["task"]
    assert published_metrics(metrics) == {}  # what leaves the node: nothing of the client's
    before = weights_from_bytes(start, learner.like)["array_0000"]
    assert not np.array_equal(before, weights_from_bytes(update, learner.like)["array_0000"])


def test_record_level_dp_refuses_a_numpy_client_task(task_root: Path) -> None:
    run = RunConfig(task=TASK, privacy=PrivacyConfig(unit="record", noise_multiplier=1.0)).pinned()
    assert task_refusals(run) == [
        f"task {TASK!r} trains outside PyTorch (numpy, e.g. a NumPy client): record-level DP "
        "needs DP-SGD on a PyTorch model; use privacy unit 'client' or a PyTorch task "
        "[rule task-dp]"
    ]
    client_level = PrivacyConfig(unit="client", noise_multiplier=1.0)
    assert task_refusals(run.model_copy(update={"privacy": client_level})) == []
    with pytest.raises(TaskError, match=r"trains outside PyTorch .*\[rule task-dp\]"):
        Learner(DataConfig(), run)  # and at start, should a member get that far


class _Client:
    """A client whose fit returns what the test gives it."""

    def __init__(self, out: object) -> None:
        self.out = out

    def get_parameters(self, config: dict[str, object]) -> list[np.ndarray]:
        return [np.zeros((2, 3))]

    def fit(self, parameters: list[np.ndarray], config: dict[str, object]) -> object:
        return self.out

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, object]) -> object:
        return 0.5, 1, {}


def _examples() -> Examples:
    return Examples(np.zeros((4, 3), np.float32), np.zeros(4, np.int64), np.arange(4))


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ([np.zeros((2, 3))], r"fit\(\) must return \(parameters, num_examples, metrics\)"),
        (([np.zeros((3, 2))], 4, {}), r"array 0 has shape \(3, 2\), the model \(2, 3\)"),
        (([np.full((2, 3), np.nan)], 4, {}), r"array 0 holds NaN or infinity"),
        (([np.zeros((2, 3)), np.zeros(1)], 4, {}), r"has 2 arrays, the model 1"),
        ((["weights"], 4, {}), r"array 0 is str, not a numeric array"),
    ],
)
def test_bad_client_output_is_one_clear_error(out: object, message: str) -> None:
    task = numpy_client_task(
        "bad", lambda ex: _Client(out), lambda node: (_examples(), _examples()), [np.ones((2, 3))]
    )
    model, _ = build_model(task, 0)
    assert isinstance(model, ClientParameters)
    assert task.train is not None
    with pytest.raises(TaskError, match=message):
        task.train(model, _examples(), TrainConfig(), None)
    assert np.array_equal(model.arrays()[0], np.ones((2, 3)))  # nothing half-applied


def test_initial_parameters_are_float32_the_same_for_a_seed_and_checked() -> None:
    def draw(rng: np.random.Generator) -> list[np.ndarray]:
        return [rng.normal(size=(2, 2))]

    task = numpy_client_task("init", lambda ex: _Client(None), lambda n: (_examples(),) * 2, draw)
    a, b, c = (build_model(task, s)[1] for s in (5, 5, 6))
    assert a["array_0000"].dtype == np.float32
    assert np.array_equal(a["array_0000"], b["array_0000"])
    assert not np.array_equal(a["array_0000"], c["array_0000"])
    nested = numpy_client_task("l", lambda ex: _Client(None), lambda n: (_examples(),) * 2, [[1.0]])
    with pytest.raises(TaskError, match="array 0 is list, not a numeric array"):
        build_model(nested, 0)
    missing = numpy_client_task("m", lambda ex: object(), lambda n: (_examples(),) * 2, draw)
    with pytest.raises(TaskError, match=r"without fit and evaluate\(parameters, config\)"):
        evaluate_task(missing, build_model(missing, 0)[0], _examples())
