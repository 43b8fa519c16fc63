"""One proof at a time per machine: two nodes' queues on one lock file never prove at once, and
submitting never blocks the caller (a node's round goes on while a proof is made)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from consortium.zk.queue import ProofQueue, ProverBusy, ProverLock


def test_two_nodes_never_prove_at_once_and_submit_does_not_wait(tmp_path: Path) -> None:
    lock = tmp_path / "prover.lock"
    a, b = ProofQueue(ProverLock(lock)), ProofQueue(ProverLock(lock))
    started_a, release_a = threading.Event(), threading.Event()
    running: list[str] = []
    overlaps: list[list[str]] = []

    def job(name: str, started: threading.Event | None, release: threading.Event | None) -> str:
        running.append(name)
        if len(running) > 1:
            overlaps.append(list(running))
        if started is not None and release is not None:
            started.set()
            assert release.wait(30)
        running.remove(name)
        return name

    fa = a.submit(lambda: job("a", started_a, release_a))
    assert started_a.wait(30)
    fb = b.submit(lambda: job("b", None, None))  # returns at once although a is proving
    assert not fb.done()
    # b cannot take the machine's lock while a holds it.
    with pytest.raises(ProverBusy, match="one proof at a time"), ProverLock(lock).hold(wait=False):
        pass
    release_a.set()
    assert fa.result(30) == "a" and fb.result(30) == "b"
    assert overlaps == []
    a.close()
    b.close()


def test_a_failing_proof_reaches_its_future_and_the_queue_goes_on(tmp_path: Path) -> None:
    q = ProofQueue(ProverLock(tmp_path / "l"))

    def boom() -> None:
        raise ValueError("no")

    bad, good = q.submit(boom), q.submit(lambda: 7)
    with pytest.raises(ValueError):
        bad.result(30)
    assert good.result(30) == 7
    q.close()
    with ProverLock(tmp_path / "l").hold(wait=False):  # released after each job
        pass
