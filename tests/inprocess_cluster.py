"""Shared by tests: N real Nodes in one asyncio loop over the in-process transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consortium.core.genesis import Purpose
from consortium.core.identity import NodeIdentity
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.privacy.config import PrivacyConfig
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport


class Clock:
    """Virtual time: deadlines pass only when the test says so, so runs are reproducible."""

    def __init__(self) -> None:
        self.now = 1_767_225_600.0

    def __call__(self) -> float:
        return self.now


async def cluster(
    root: Path,
    n: int,
    seed: int,
    *,
    consent: bool = True,
    purpose: Purpose | None = None,
    allow_plaintext: bool = True,
) -> tuple[list[Node], InProcessNetwork, Clock]:
    """N started nodes; consent registries hold random salts, so only consent=False runs are
    reproducible to the byte. Their policy accepts plaintext runs unless `allow_plaintext` is
    False (most round tests run plaintext for speed)."""
    dirs = create_consortium(
        root,
        n,
        alpha=0.5,
        seed=seed,
        reproducible=True,
        consent=consent,
        purpose=purpose,
        allow_plaintext=allow_plaintext,
    )
    net = InProcessNetwork()
    clock = Clock()
    nodes = []
    for d in dirs:
        ident = NodeIdentity.load(d)
        cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.02})
        nodes.append(Node(d, ident, InProcessTransport(net, ident.node_id), cfg, clock=clock))
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
    )


async def start(nodes: list[Node], run: RunConfig) -> None:
    """nodes[0] proposes `run`; it starts on every member once a quorum cosigned it."""
    report = await nodes[0].propose_run(run)
    assert report["started"], report


async def until_finished(nodes: list[Node], clock: Clock, step: float, limit: float = 120) -> None:
    """Let real time pass; when nothing commits for a while, move virtual time past a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    last, idle = -1, 0
    while not all(n.finished.is_set() for n in nodes):
        assert loop.time() < end, "run did not finish"
        await asyncio.sleep(0.05)
        size = sum(n.ledger.size for n in nodes)
        idle = idle + 1 if size == last else 0
        last = size
        if idle > 40:  # 2 s of real time without a commit: let a deadline pass
            clock.now += step
            idle = 0
