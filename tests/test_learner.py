"""The node's Learner: one training at a time on its one model."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import pytest

from consortium.learning.serialize import weights_to_bytes
from consortium.node import learner as learner_module
from consortium.node.config import DataConfig, RunConfig
from consortium.node.learner import Learner

DEADLINE = 60.0  # seconds a thread may take to reach a point it reaches in milliseconds


class _Door:
    """The Learner's lock, counting the threads that came to it (before they wait on it)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.arrived = 0
        self.cond = threading.Condition()

    def __enter__(self) -> None:
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
        self.lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.lock.release()


def test_a_second_training_waits_for_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads training the one model at once corrupt memory (found by `bench chaos`: a
    node that resumed mid-round got the round's commit and began the next round's training
    while the stale one ran, and segfaulted). The first to get in holds on until the other has come
    to the lock; the other must then not get in before the first is out."""
    learner = Learner(
        DataConfig(dataset="digits", partition="iid", parts=5), RunConfig(rounds=2, epochs=1)
    )
    door = _Door(learner.training)
    learner.training = door  # type: ignore[assignment]
    real = learner_module.train_local
    inside, most, calls = 0, 0, 0
    count = threading.Lock()

    def train_local(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most, calls
        with count:
            inside, calls = inside + 1, calls + 1
            most, first = max(most, inside), calls == 1
        if first:
            with door.cond:
                assert door.cond.wait_for(lambda: door.arrived == 2, DEADLINE), "no 2nd call"
        try:
            return real(*args, **kwargs)
        finally:
            with count:
                inside -= 1

    monkeypatch.setattr(learner_module, "train_local", train_local)
    model = weights_to_bytes(learner.like)
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def train(round_no: int) -> None:
        try:
            results[round_no] = learner.train(model, round_no)[1]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    first = threading.Thread(target=train, args=(1,))
    first.start()
    second = threading.Thread(target=train, args=(2,))
    second.start()
    for t in (first, second):
        t.join(2 * DEADLINE)  # beyond the wait inside, so its failure is reported
    assert not errors, errors
    assert calls == 2 and most == 1, (calls, most)
    # Each result is what training alone gives (seeded by round).
    monkeypatch.setattr(learner_module, "train_local", real)
    learner.training = threading.Lock()
    assert results == {r: learner.train(model, r)[1] for r in (1, 2)}
