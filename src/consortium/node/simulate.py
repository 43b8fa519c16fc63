"""Simulated consortia: many members' real `Node`s in one process (in-process backend) or spread
over Ray actors (`node.ray_host`), driving the same round machine as `consortium node start`.

A `SimHost` runs the Nodes of some member folders on one asyncio loop over a `CountingNetwork`
(an `InProcessNetwork` that counts every request's and reply's payload bytes per member). The
in-process backend is one host in the driver's loop; the Ray backend is one host per actor, whose
network sends a request for a member on another actor through Ray (`ray_host.RayNetwork`). So
the members, their folders (SQLite ledger, content-addressed store, keys), their messages and
every check are those of a real run; only the wire differs.

Training is the fixed-vector task (`consortium.bench.fixed_task:vector_<d>`): each member's
update is its own fixed vector of length d, so a simulated round costs what the protocol costs.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.core.errors import ConsortiumError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.protocol.record import run_records
from consortium.protocol.round import Committed
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

SEED = 0


def fixed_task(d: int) -> str:
    """The run configuration's `task` for the fixed-vector task of d parameters."""
    return f"consortium.bench.fixed_task:vector_{d}"


def peak_rss_bytes() -> int:
    """This process's peak resident set size (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class TimedNode(Node):
    """A Node that notes when each round begins and commits (perf_counter seconds), and calls
    `on_commit(round)` (if set) as it commits one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.begun: dict[int, float] = {}
        self.committed: dict[int, float] = {}
        self.on_commit: Callable[[int], None] | None = None

    def _begin(self, round_no: int, *, late: bool = False) -> None:
        self.begun[round_no] = time.perf_counter()
        super()._begin(round_no, late=late)

    def _commit(self, c: Committed) -> None:
        self.committed[c.round] = time.perf_counter()
        if self.on_commit is not None:
            self.on_commit(c.round)
        super()._commit(c)  # appends, then begins the next round


class CountingNetwork(InProcessNetwork):
    """An InProcessNetwork that counts request and reply payload bytes per member (what it sent
    and received, so each byte counts for both ends), as the sender's side sees them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.by_node: dict[str, int] = defaultdict(int)

    def count(self, sender: str, peer: str, size: int) -> None:
        self.by_node[sender] += size
        self.by_node[peer] += size

    async def _deliver(
        self, sender: str, peer: str, method: str, payload: bytes, timeout: float
    ) -> bytes:
        self.count(sender, peer, len(payload))  # sent even if no reply comes back
        reply = await self._route(sender, peer, method, payload, timeout)
        self.count(sender, peer, len(reply))
        return reply

    async def _route(
        self, sender: str, peer: str, method: str, payload: bytes, timeout: float
    ) -> bytes:
        """Deliver to `peer`: here, a member on this network (a subclass routes elsewhere)."""
        return await InProcessNetwork._deliver(self, sender, peer, method, payload, timeout)

    def attached(self) -> set[str]:
        return set(self._handlers)


@dataclass
class HostReport:
    """What one host saw: per member bytes, when its nodes committed each round, its memory."""

    by_node: dict[str, int]
    remote_bytes: int  # of them, bytes that crossed to another host (Ray)
    committed: dict[str, dict[int, float]]  # node id -> round -> seconds since the host's start
    rounds_done: int  # the fewest rounds any of its nodes committed
    roots: list[str]  # each node's ledger root (hex)
    pid: int
    peak_rss: int
    failovers: int = 0
    short_rounds: list[int] = field(default_factory=list)


class SimHost:
    """The Nodes of some member folders on this asyncio loop, over `network`."""

    def __init__(self, dirs: list[Path], network: CountingNetwork) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.network = network
        self.nodes: list[TimedNode] = []
        self.t0 = time.perf_counter()

    def member_ids(self) -> list[str]:
        return [NodeIdentity.load(d).node_id for d in self.dirs]

    async def start(self) -> None:
        """Create and start every node (a node's start catches up from its peers: a peer on a
        host not yet started is unreachable, which a fresh consortium does not need)."""
        for d in self.dirs:
            ident = NodeIdentity.load(d)
            transport = InProcessTransport(self.network, ident.node_id)
            self.nodes.append(TimedNode(d, ident, transport, load_node_config(d)))
        for node in self.nodes:
            await node.start()

    async def propose(self, run: dict[str, Any]) -> dict[str, Any]:
        """Propose the run configuration `run` from this host's first node (a quorum agrees,
        then it starts on every member); what the agreement reported."""
        report = await self.nodes[0].propose_run(RunConfig.model_validate(run))
        return {k: v for k, v in report.items() if k in ("started", "refused", "unreachable")}

    def rounds_done(self) -> int:
        return min((max(n.committed, default=0) for n in self.nodes), default=0)

    def finished(self) -> bool:
        return all(n.finished.is_set() for n in self.nodes)

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for every node here to finish the run; whether they did."""
        try:
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(n.finished.wait() for n in self.nodes))
        except TimeoutError:
            return False
        return True

    def latencies(self) -> dict[int, float]:
        """Seconds from the start of each round to its commit, on this host's first node."""
        first = self.nodes[0]
        return {r: t - first.begun[r] for r, t in first.committed.items() if r in first.begun}

    def report(self) -> HostReport:
        records = run_records(self.nodes[0].ledger) if self.nodes else []
        n = len(self.nodes[0].genesis.members) if self.nodes else 0
        remote = getattr(self.network, "remote_bytes", 0)
        return HostReport(
            by_node=dict(self.network.by_node),
            remote_bytes=int(remote),
            committed={
                node.identity.node_id: {r: t - self.t0 for r, t in node.committed.items()}
                for node in self.nodes
            },
            rounds_done=self.rounds_done(),
            roots=[node.ledger.root().hex() for node in self.nodes],
            pid=os.getpid(),
            peak_rss=peak_rss_bytes(),
            failovers=sum(1 for r in records if r.attempt > 0),
            # Fewer contributors than the round's contributors could be (every member, or K).
            short_rounds=[r.round for r in records if len(r.participants) < (r.committee or n)],
        )

    async def stop(self) -> None:
        for node in self.nodes:
            await node.stop()
        self.nodes = []


# -- the driver ----------------------------------------------------------------------------------


@dataclass
class SimSettings:
    members: int
    rounds: int = 3
    d: int = 100
    per_round: int | None = None  # None: every member
    backend: str = "inprocess"  # inprocess | ray
    actors: int = 0  # Ray: actors (0: one per core)
    address: str | None = None  # Ray: join this cluster instead of starting one
    corrupt_fraction: float | None = None  # SecAgg+ sparse graph (needed above 300 members)
    beacon_group: int = 0  # members who make the beacon (0: every member)
    collect_timeout: float = 120.0
    round_timeout: float = 600.0
    run_timeout: float = 3600.0


@dataclass
class SimResult:
    settings: SimSettings
    hosts: list[HostReport] = field(default_factory=list)
    setup_s: float = 0.0  # member folders and the genesis ceremony
    start_s: float = 0.0  # hosts and nodes started
    run_s: float = 0.0  # from proposing the run until every node finished it
    latencies: dict[int, float] = field(default_factory=dict)  # round -> s, on member 0
    driver_peak_rss: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rounds_done(self) -> int:
        return min((h.rounds_done for h in self.hosts), default=0)

    def timed(self) -> list[float]:
        """Round times on member 0, round 1 left out (it also covers loading the task)."""
        rounds = sorted(self.latencies)
        keep = rounds[1:] if len(rounds) > 1 else rounds
        return [self.latencies[r] for r in keep]

    @property
    def round_s(self) -> float:
        timed = sorted(self.timed())
        return timed[len(timed) // 2] if timed else float("nan")

    @property
    def rounds_per_hour(self) -> float:
        return 3600.0 / self.round_s if self.round_s > 0 else float("nan")

    @property
    def members_per_s(self) -> float:
        """Member-rounds per second: members whose update entered a round (every member, or
        the committee of --per-round), per second of a (median, warm) round."""
        s = self.settings
        contributors = s.per_round or s.members
        return contributors / self.round_s if self.round_s > 0 else float("nan")

    @property
    def peak_memory(self) -> int:
        """The sum of every process's peak RSS (driver and each host; an upper bound on the
        peak of their sum). Ray's own daemons are not in it."""
        pids = {h.pid: h.peak_rss for h in self.hosts}
        pids[os.getpid()] = max(pids.get(os.getpid(), 0), self.driver_peak_rss)
        return sum(pids.values())

    @property
    def bytes_per_member_round(self) -> float:
        """Bytes each member sent and received per round, averaged over members and over the
        whole run (the run's agreement and start-up catch-up included)."""
        total: dict[str, int] = defaultdict(int)
        for h in self.hosts:
            for node, size in h.by_node.items():
                total[node] += size
        done = self.rounds_done
        if not total or not done:
            return float("nan")
        return sum(total.values()) / len(total) / done

    @property
    def remote_bytes(self) -> int:
        return sum(h.remote_bytes for h in self.hosts)


Progress = Callable[[str, int, int], None]


def _quiet(phase: str, done: int, total: int) -> None:
    return None


def run_config(s: SimSettings) -> RunConfig:
    return RunConfig(
        rounds=s.rounds,
        task=fixed_task(s.d),
        seed=SEED,
        min_updates=s.per_round or s.members,
        # Committees: each round's K contributors drawn from its beacon (0: every member).
        committee_size=s.per_round if s.per_round and s.per_round < s.members else 0,
        collect_timeout=s.collect_timeout,
        round_timeout=s.round_timeout,
        secagg_corrupt_fraction=s.corrupt_fraction,
        started=int(time.time() * 1000),
    )


def seed_ledgers(dirs: list[Path]) -> None:
    """Give every member folder its ledger holding entry 0 (the manifest), as its node would
    create it on first start: one file made once and copied (it holds nothing member-specific),
    instead of each of n nodes checking and encoding the O(n²)-byte manifest again."""
    first = dirs[0] / LEDGER_FILE
    Ledger.create(first, Genesis.load_verified(dirs[0] / GENESIS_FILE)).close()
    for d in dirs[1:]:
        shutil.copyfile(first, d / LEDGER_FILE)


class Backend:
    """Hosts to drive: `call(i, method, *args)` awaits host i's method."""

    hosts: int

    async def open(self, dirs: list[list[Path]]) -> None:
        raise NotImplementedError

    async def call(self, i: int, method: str, *args: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class InProcessBackend(Backend):
    """One host in the driver's own loop and process."""

    def __init__(self) -> None:
        self._hosts: list[SimHost] = []

    async def open(self, dirs: list[list[Path]]) -> None:
        network = CountingNetwork(seed=SEED)
        self._hosts = [SimHost([d for part in dirs for d in part], network)]
        self.hosts = 1

    async def call(self, i: int, method: str, *args: Any) -> Any:
        result = getattr(self._hosts[i], method)(*args)
        return await result if asyncio.iscoroutine(result) else result

    async def close(self) -> None:
        for h in self._hosts:
            await h.stop()


async def simulate_async(
    s: SimSettings, root: Path, backend: Backend, progress: Progress = _quiet
) -> SimResult:
    """Create a consortium of `s.members` under `root`, start it on `backend`'s hosts, run
    `s.rounds` rounds of the fixed-vector task, and report."""
    # Imported here: create_consortium pulls in datasets and the chain, which hosts never need.
    from consortium.node.sim import create_consortium

    result = SimResult(s)
    t = time.perf_counter()
    progress("genesis ceremony", 0, 1)
    dirs = create_consortium(
        root, s.members, partition="iid", seed=SEED, consent=False, beacon_group=s.beacon_group
    )
    seed_ledgers(dirs)
    result.setup_s = time.perf_counter() - t
    progress("genesis ceremony", 1, 1)
    parts = max(1, min(s.members, s.actors or 1))
    chunks = [dirs[i::parts] for i in range(parts)]
    t = time.perf_counter()
    try:
        await backend.open(chunks)
        progress("starting nodes", 0, backend.hosts)
        started = 0

        async def start(i: int) -> None:  # hosts start side by side (one actor per core)
            nonlocal started
            await backend.call(i, "start")
            started += 1
            progress("starting nodes", started, backend.hosts)

        await asyncio.gather(*(start(i) for i in range(backend.hosts)))
        result.start_s = time.perf_counter() - t
        t = time.perf_counter()
        report = await backend.call(0, "propose", run_config(s).model_dump())
        if not report["started"]:
            raise ConsortiumError(f"the members did not agree to the run: {report}")
        deadline = time.monotonic() + s.run_timeout
        while True:
            done = [await backend.call(i, "rounds_done") for i in range(backend.hosts)]
            progress("rounds", min(done), s.rounds)
            finished = [await backend.call(i, "finished") for i in range(backend.hosts)]
            if all(finished):
                break
            if time.monotonic() > deadline:
                result.notes.append(f"run unfinished after {s.run_timeout:g} s (--run-timeout)")
                break
            await asyncio.sleep(0.5)
        progress(
            "rounds",
            min([await backend.call(i, "rounds_done") for i in range(backend.hosts)]),
            s.rounds,
        )
        result.run_s = time.perf_counter() - t
        result.hosts = [await backend.call(i, "report") for i in range(backend.hosts)]
        result.latencies = await backend.call(0, "latencies")
    finally:
        await backend.close()
    result.driver_peak_rss = peak_rss_bytes()
    roots = {r for h in result.hosts for r in h.roots}
    if len(roots) != 1:
        result.notes.append("replicas disagree at the end of the run")
    if any(h.failovers for h in result.hosts[:1]):
        result.notes.append(f"{result.hosts[0].failovers} round(s) needed a failover")
    if result.hosts and result.hosts[0].short_rounds:
        result.notes.append(
            f"rounds {result.hosts[0].short_rounds} committed without every contributor's update"
        )
    return result
