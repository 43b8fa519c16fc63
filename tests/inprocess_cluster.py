"""Shared by tests: N real Nodes in one asyncio loop over the in-process transport."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from consortium.core.genesis import DEFAULT_UNIXFS_PROFILE, Purpose
from consortium.core.identity import NodeIdentity
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.round import Phase
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport


class Clock:
    """Virtual time: deadlines pass only when the test says so, so runs are reproducible."""

    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


class Skewed:
    """One node's clock: the shared virtual time plus a fixed offset (a badly set clock)."""

    def __init__(self, clock: Clock, offset: float) -> None:
        self.clock, self.offset = clock, offset

    def __call__(self) -> float:
        return self.clock.now + self.offset


async def cluster(
    root: Path,
    n: int,
    seed: int,
    *,
    consent: bool = True,
    purpose: Purpose | None = None,
    allow_plaintext: bool = True,
    offsets: Sequence[float] = (),
    unixfs_profile: str = DEFAULT_UNIXFS_PROFILE,
) -> tuple[list[Node], InProcessNetwork, Clock]:
    """N started nodes; consent registries hold random salts, so only consent=False runs are
    reproducible to the byte. Their policy accepts plaintext runs unless `allow_plaintext` is
    False (most round tests run plaintext for speed). Node i's clock is off by `offsets[i]`
    seconds (default 0)."""
    dirs = create_consortium(
        root,
        n,
        alpha=0.5,
        seed=seed,
        reproducible=True,
        consent=consent,
        purpose=purpose,
        allow_plaintext=allow_plaintext,
        unixfs_profile=unixfs_profile,
    )
    net = InProcessNetwork()
    clock = Clock()
    nodes = []
    for d in dirs:
        ident = NodeIdentity.load(d)
        cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.02})
        offset = offsets[len(nodes)] if offsets else 0.0
        node_clock = Skewed(clock, offset) if offset else clock
        nodes.append(Node(d, ident, InProcessTransport(net, ident.node_id), cfg, clock=node_clock))
    for node in nodes:
        await node.start()
    return nodes, net, clock


def run_config(
    rounds: int,
    seed: int = 0,
    anchor_every: int = 0,
    secure: str = "none",
    privacy: dict[str, object] | None = None,
) -> RunConfig:
    return RunConfig(
        privacy=PrivacyConfig.model_validate(privacy or {}),
        anchor_every=anchor_every,
        secure_aggregation=secure,  # type: ignore[arg-type]
        rounds=rounds,
        seed=seed,
        lr=0.1,
        epochs=2,
        min_updates=2,
        collect_timeout=5.0,
        round_timeout=20.0,
        started=1,
    ).pinned()


async def start(nodes: list[Node], run: RunConfig) -> None:
    """nodes[0] proposes `run`; it starts on every member once a quorum cosigned it."""
    report = await nodes[0].propose_run(run)
    assert report["started"], report


def _deadline_due(nodes: list[Node], net: InProcessNetwork) -> float:
    """Seconds of virtual time to let pass now, or 0: only when the live nodes all wait on a
    deadline that an unreachable member keeps them from meeting."""
    live = {n.identity.node_id: n for n in nodes if net.is_up(n.identity.node_id)}
    machines = [n.machine for n in live.values() if n.machine and not n.finished.is_set()]
    if not machines or len({(m.round, m.s.attempt) for m in machines}) != 1:
        return 0.0  # nothing running, or nodes between rounds or attempts: let them settle
    m = machines[0]
    settings = m.settings
    if any(x.beacon is None for x in machines):
        return 0.0  # partials in flight (a late node asks for them when it begins)
    lead = live.get(m.leader())
    if lead is None or lead.machine is None:  # the attempt's leader is cut off
        waiting = all(x.phase is Phase.AWAITING for x in machines)
        return settings.round_timeout + 1 if waiting else 0.0
    s = lead.machine.s
    if lead.machine.phase is Phase.COLLECTING and set(s.updates) >= set(live):
        return settings.collect_timeout + 1  # every live update is in; the rest never comes
    if lead.machine.phase is Phase.SECURE and s.leading is not None:
        missing = s.leading.expected - s.leading.received
        if missing and not missing & set(live):
            return settings.collect_timeout + 1  # a SecAgg+ stage waits only for the cut off
    return 0.0


def _progress(nodes: list[Node]) -> tuple[object, ...]:
    """What a passed deadline changes: ledger, round, attempt, phase and a leader's SecAgg+
    stage (a stage closed on its deadline leaves the leader in the SECURE phase)."""
    return tuple(
        (
            n.ledger.size,
            n.machine.round,
            n.machine.s.attempt,
            n.machine.phase,
            n.machine.s.leading.stage if n.machine.s.leading else -1,
        )
        if n.machine
        else (n.ledger.size,)
        for n in nodes
    )


async def drive(nodes: list[Node], net: InProcessNetwork, clock: Clock, limit: float = 120) -> None:
    """Until every node of `nodes` that is still connected finished its run, moving virtual time
    past a deadline only when the protocol state shows that they wait for it (`_deadline_due`);
    it never guesses from a quiet spell of real time, so the deadlines that pass are the ones the
    test's faults cause. Members left out of `nodes` count as unreachable (a test passes only
    the honest ones), and a node the test cuts off meanwhile (`net.disconnect`) need not finish.
    `limit` bounds real time only, so a stuck run fails instead of hanging."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit

    def live() -> list[Node]:
        return [n for n in nodes if net.is_up(n.identity.node_id)]

    while not all(n.finished.is_set() for n in live()):
        assert loop.time() < end, f"run did not finish: {_progress(nodes)}"
        await asyncio.sleep(0.02)
        due = _deadline_due(nodes, net)
        if due:
            before = _progress(live())
            clock.now += due
            while _progress(live()) == before:  # each node's next tick acts on the new time
                assert loop.time() < end, f"nothing moved after a deadline: {before}"
                await asyncio.sleep(0.02)
