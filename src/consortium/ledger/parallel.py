"""Ed25519 signature checks on every core: one process pool per process, shared by the ledger's
batched appends, replica sync and the auditor.

`cryptography` holds the GIL while it verifies, so threads do not help: checks go to worker
processes in a few large chunks (a chunk costs one pickle each way, ~2 µs per signature, against
~75 µs for the check itself). Below MIN_PARALLEL signatures the round trip costs more than it
saves, and the checks run inline. Every signature is checked either way; a chunk stops at its
first invalid signature and the caller learns the first invalid one of the whole batch, so the
pool and the inline path always give the same answer.

Start method: a worker is a fork of this process when it has no other thread (the CLI, the
auditor, benchmarks), and otherwise (a node serving gRPC) a fork of a fresh forkserver process:
forking a process whose other threads may hold locks can deadlock the child.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: Fewer signatures than this are checked inline.
MIN_PARALLEL = 256

#: (Ed25519 public key, signature, message): valid if the key signed prefix ‖ message.
Check = tuple[bytes, bytes, bytes]

T = TypeVar("T")

#: What a worker runs comes from here (it imports `parallel` and `entries`): light to import.
_WORKER_MODULE = "consortium.ledger.stored"

_pools: dict[int, ProcessPoolExecutor] = {}
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A pool belongs to the process that made it: a child forked later (a simulated node, say)
    starts its own rather than writing into its parent's pipes, with a lock nobody holds."""
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def workers_for(workers: int | None) -> int:
    return max(1, workers or cpu_count())


@functools.lru_cache(maxsize=1024)
def _key(raw: bytes) -> Ed25519PublicKey:
    # Parsing a key costs as much as hashing a short entry; members are few.
    return Ed25519PublicKey.from_public_bytes(raw)


def first_invalid(prefix: bytes, checks: Sequence[Check]) -> int | None:
    """Index of the first check whose signature is not valid on prefix ‖ message, or None.

    A malformed key or a signature of the wrong length is invalid, never an exception."""
    for i, (key, signature, message) in enumerate(checks):
        try:
            _key(key).verify(signature, prefix + message)
        except (InvalidSignature, ValueError):
            return i
    return None


def pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of `workers` processes (created on first use, kept for later batches)."""
    with _lock:
        found = _pools.get(workers)
        if found is None:
            if threading.active_count() == 1:
                found = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            else:
                server = multiprocessing.get_context("forkserver")
                server.set_forkserver_preload([_WORKER_MODULE])  # imported once, by the server
                found = ProcessPoolExecutor(workers, mp_context=server)
            _pools[workers] = found
        return found


def shutdown() -> None:
    """Stop this process's pools and their workers (a later batch starts a new pool). Exiting
    normally does it too; a process leaving by `os._exit` must call it first, or its workers
    outlive it."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for executor in pools:
        executor.shutdown(wait=True, cancel_futures=True)


def _discard(workers: int, broken: ProcessPoolExecutor) -> None:
    with _lock:
        if _pools.get(workers) is broken:
            del _pools[workers]
    broken.shutdown(wait=False, cancel_futures=True)


def split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """`items` cut into at most `parts` consecutive slices of near-equal length."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(items[start:end])
        start = end
    return out


class Pending(Generic[T]):
    """`fn(*chunk)` for chunks given at construction or added later: submitted to the pool as
    they come (when `workers` > 1, and there are several chunks or `expect_more`), so the caller
    works meanwhile; `results` yields them in order. A pool that breaks (a worker killed) is
    discarded and the chunks it did not answer run inline."""

    def __init__(
        self,
        fn: Callable[..., T],
        chunks: Sequence[tuple[Any, ...]] = (),
        workers: int = 1,
        expect_more: bool = False,
    ) -> None:
        self._fn = fn
        self._chunks: list[tuple[Any, ...]] = []
        self._futures: list[Future[T]] = []
        self._workers = workers
        self._executor: ProcessPoolExecutor | None = None
        if workers > 1 and (len(chunks) > 1 or expect_more):
            self._executor = pool(workers)
        for chunk in chunks:
            self.add(chunk)

    def add(self, chunk: tuple[Any, ...]) -> None:
        self._chunks.append(chunk)
        if self._executor is not None and len(self._futures) == len(self._chunks) - 1:
            try:
                self._futures.append(self._executor.submit(self._fn, *chunk))
            except BrokenProcessPool:
                self._broken()

    def _broken(self) -> None:
        if self._executor is not None:
            _discard(self._workers, self._executor)
            self._executor = None

    def results(self) -> Iterator[T]:
        for k, chunk in enumerate(self._chunks):
            if k < len(self._futures):
                try:
                    yield self._futures[k].result()
                    continue
                except BrokenProcessPool:
                    self._broken()
                    self._futures = self._futures[:k]
            yield self._fn(*chunk)


class SignatureBatch:
    """Signature checks over prefix ‖ message, submitted now and answered by `first_invalid`."""

    def __init__(self, prefix: bytes, checks: Sequence[Check], workers: int | None = None) -> None:
        n = workers_for(workers) if len(checks) >= MIN_PARALLEL else 1
        # Twice as many slices as workers: the caller's own process shares the cores.
        self._slices = split(checks, 2 * n) if n > 1 else [checks]
        self._pending = Pending(first_invalid, [(prefix, s) for s in self._slices], n)

    def first_invalid(self) -> int | None:
        """Index of the first invalid signature of the batch, or None if every one is valid."""
        offset = 0
        for piece, found in zip(self._slices, self._pending.results(), strict=True):
            if found is not None:
                return offset + found
            offset += len(piece)
        return None


def verify_repeatedly(key: bytes, signature: bytes, payload: bytes, n: int) -> int:
    """Verify one valid signature `n` times (the benchmark's measure of the machine's limit: the
    same `cryptography` call every check above makes, without any of our work around it)."""
    public = Ed25519PublicKey.from_public_bytes(key)
    for _ in range(n):
        public.verify(signature, payload)
    return n


def verification_limit(key: bytes, signature: bytes, payload: bytes, n: int = 20_000) -> float:
    """Signatures per second this machine verifies now on all its cores (`cpu_count()`
    processes of this module's pool, each verifying n / cores times)."""
    workers = cpu_count()
    if workers == 1:
        start = time.perf_counter()
        return verify_repeatedly(key, signature, payload, n) / (time.perf_counter() - start)
    executor = pool(workers)
    for _ in executor.map(
        verify_repeatedly, *[[v] * workers for v in (key, signature, payload, 1)]
    ):
        pass  # every worker started before the clock
    parts = 2 * workers
    start = time.perf_counter()
    done = sum(
        executor.map(
            verify_repeatedly, *[[v] * parts for v in (key, signature, payload, n // parts)]
        )
    )
    return done / (time.perf_counter() - start)
