"""One proof at a time per machine, off the round's critical path.

Proving is memory-hungry (GBs for larger circuits), so several nodes on one machine must not
prove at once: every prover takes an exclusive `flock` on one machine-wide file
(`CONSORTIUM_ZK_LOCK`, default `<tmp>/consortium-zk-prover.lock`) for the duration of a proof.
The kernel drops it when the holder dies, so there is no stale lock. `ProofQueue` runs proofs in
one background thread per node, each under that lock, so the caller (a node between rounds)
never waits for a proof: rounds keep their deadlines while a proof is being made.
"""

from __future__ import annotations

import fcntl
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from consortium.core.errors import ConsortiumError

LOCK_ENV = "CONSORTIUM_ZK_LOCK"


def default_lock_path() -> Path:
    return Path(
        os.environ.get(LOCK_ENV) or Path(tempfile.gettempdir()) / "consortium-zk-prover.lock"
    )


class ProverBusy(ConsortiumError):
    """Another process on this machine is proving (only when not waiting)."""


class ProverLock:
    """The machine-wide prover lock (an flock on one file)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_lock_path()

    @contextmanager
    def hold(self, *, wait: bool = True) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise ProverBusy(
                    f"another prover (pid {holder}) holds {self.path}: one proof at a time"
                ) from exc
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock


class ProofQueue:
    """Proof jobs of one node, run one after another in a background thread, each under the
    machine's `ProverLock`. `submit` returns at once with a Future."""

    def __init__(self, lock: ProverLock | None = None) -> None:
        self.lock = lock or ProverLock()
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="zk-prover", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((job, future))
        return future

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                with self.lock.hold():
                    result = job()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
