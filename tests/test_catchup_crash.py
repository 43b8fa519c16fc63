"""Catch-up is crash-consistent: a node never records a ledger entry whose artifacts it lacks.

The node is SIGKILLed at seeded points of its start-up catch-up (before, during and after the
artifact fetch and the ledger append); after every kill its folder already holds every artifact
its ledger references, and after a restart it audits clean with the same root as its peers.
Plus the refusals, in-process: a peer's bytes that do not re-hash to their CID are never stored
and their entries never appended; artifacts no peer has are reported at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from multiformats import CID

from consortium.audit import audit
from consortium.core.errors import TransportError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.ledger import Entry, Ledger, make_record
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.store.blockstore import CHUNK_SIZE, BlockStore
from consortium.store.cid import as_cid
from consortium.store.objects import get_bytes, is_complete, put_bytes, walk
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

CHILD = Path(__file__).with_name("catchup_child.py")
SEED = 13
KILLS = 20
#: Kill points by phase (names from catchup_child.Points); every phase gets at least one kill.
PHASES = {
    "sync": ("before request sync", "after request sync"),
    "fetch": (
        "before request artifact",
        "after request artifact",
        "before block write",
        "half a block written",
        "after block write",
    ),
    "append": (
        "before the append transaction",
        "in the append transaction, before its rows",
        "in the append transaction, rows written, not committed",
    ),
    "after append": ("after the append transaction",),
}


@dataclass
class Folders:
    victim: Path  # a prefix of the log, and its store lacks an artifact of it (an old crash)
    behind: Path  # a longer prefix
    full: Path  # the whole log
    lost: CID  # the artifact the victim lacks


def _artifacts(rng: random.Random, i: int) -> list[bytes]:
    small = [rng.randbytes(rng.randrange(100, 5000)) for _ in range(1 + i % 2)]
    if i == 3:  # a file of several blocks: a kill can land between its blocks
        small.append(rng.randbytes(2 * CHUNK_SIZE + 1000))
    return small


def _build(root: Path) -> Folders:
    """Three members; hand-built logs of records referencing artifacts, every head cosigned
    by all. node0 holds 3 entries, node1 5, node2 all 7."""
    dirs = create_consortium(root, 3, consent=False)
    idents = [NodeIdentity.load(d) for d in dirs]
    genesis = Genesis.load(dirs[0] / GENESIS_FILE)
    rng = random.Random(SEED)
    shared = rng.randbytes(3000)  # referenced by two entries
    entries: list[tuple[Entry, list[bytes]]] = []
    for i in range(1, 7):
        blobs = _artifacts(rng, i) + ([shared] if i in (4, 6) else [])
        scratch = BlockStore(root / "scratch")
        body = {"i": i, "artifacts": [put_bytes(scratch, b) for b in blobs]}
        entries.append((make_record(idents[i % 3], "note", body, i, genesis), blobs))
    for d, count in zip(dirs, (2, 4, 6), strict=True):
        store = BlockStore(d / STORE_DIR)
        with Ledger.create(d / LEDGER_FILE, genesis) as led:
            for i, (entry, blobs) in enumerate(entries[:count], start=1):
                for b in blobs:
                    put_bytes(store, b)
                led.append(entry)
                for ident in idents:
                    led.sign_head(ident, 1000 + i)
    lost = as_cid(entries[1][0].references()[0])  # entry 2's first: gone from node0's store
    BlockStore(dirs[0] / STORE_DIR).delete(lost)
    return Folders(dirs[0], dirs[1], dirs[2], lost)


def _lacking(d: Path) -> list[str]:
    """What the folder's ledger references that its store does not hold."""
    store = BlockStore(d / STORE_DIR)
    with Ledger.open(d / LEDGER_FILE) as led:
        led.fsck()
        refs = [c for e in led.iter_entries(1) for c in e.references()]
    return [str(as_cid(c)) for c in refs if not is_complete(store, c)]


class Zygote:
    """The process of catchup_child.py: forks one killable catch-up per `run`."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.log = log
        self._err = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=env,
            text=True,
        )
        assert self._line(120) == "ready"

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"catchup_child gave no answer within {timeout:.0f} s\n{self.tail()}"
        return self.proc.stdout.readline().strip()

    def tail(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def run(self, f: Folders, victim: Path, kill_at: int | None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        out = victim.with_suffix(".json")
        out.unlink(missing_ok=True)
        cmd = {
            "victim": str(victim),
            "peers": [str(f.behind), str(f.full)],
            "kill_at": kill_at,
            "out": str(out),
        }
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(self._line(120))
        if "code" in reply:
            assert reply["code"] == 0, f"catch-up failed:\n{self.tail()}"
            reply.update(json.loads(out.read_text()))
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self._err.close()


def _kill_points(names: list[str]) -> list[int]:
    """KILLS seeded indexes into the points a whole catch-up passes: one in each phase first,
    the rest anywhere."""
    rng = random.Random(SEED)
    chosen = []
    for phase, kinds in PHASES.items():
        where = [i for i, n in enumerate(names) if n in kinds]
        assert where, f"the catch-up never passed a {phase} point: {names}"
        chosen.append(rng.choice(where))
    chosen += [rng.randrange(len(names)) for _ in range(KILLS - len(chosen))]
    return chosen


def test_catch_up_killed_anywhere_heals_on_restart(tmp_path: Path) -> None:
    f = _build(tmp_path / "c")
    assert _lacking(f.victim) == [str(f.lost)]
    with Ledger.open(f.full / LEDGER_FILE) as full:
        size, root = full.size, full.root()
    zygote = Zygote(tmp_path / "child.log")
    try:
        # One catch-up without a kill: the points it passes, and that it heals the old damage.
        clean = tmp_path / "clean"
        shutil.copytree(f.victim, clean)
        done = zygote.run(f, clean, None)
        assert done["appended"] == 4
        assert audit(clean, workers=1).root == root
        names: list[str] = done["points"]

        rng = random.Random(SEED + 1)
        for trial, k in enumerate(_kill_points(names)):
            victim = tmp_path / f"trial{trial}"
            shutil.copytree(f.victim, victim)
            where = f"trial {trial}: killed at point {k} ({names[k]})"
            assert zygote.run(f, victim, k) == {"signal": 9}, where
            lacking = _lacking(victim)
            assert set(lacking) <= {str(f.lost)}, f"{where}: the ledger got ahead of the store"
            # Killed again while restarting, at a point it may or may not reach this time.
            again = zygote.run(f, victim, rng.randrange(len(names)))
            assert again == {"signal": 9} or again["code"] == 0, where
            assert set(_lacking(victim)) <= {str(f.lost)}, where
            zygote.run(f, victim, None)
            report = audit(victim, workers=1)  # AuditError names the first problem
            assert (report.entries, report.root) == (size, root), where
    finally:
        zygote.close()


# -- refusals, in-process ------------------------------------------------------------------------


async def _serve(net: InProcessNetwork, d: Path, lie: bool = False) -> Node:
    ident = NodeIdentity.load(d)
    node = Node(d, ident, InProcessTransport(net, ident.node_id))
    handle = node._handle

    async def lying(sender: str, method: str, payload: bytes) -> bytes:
        reply = await handle(sender, method, payload)
        return reply[::-1] if method == "artifact" else reply  # the right size, wrong bytes

    await node.transport.start(lying if lie else handle)
    return node


async def _victim(net: InProcessNetwork, d: Path) -> Node:
    ident = NodeIdentity.load(d)
    node = Node(d, ident, InProcessTransport(net, ident.node_id))
    await node.transport.start(node._handle)
    return node


def test_bytes_that_do_not_match_their_cid_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = _build(tmp_path)

    async def main() -> None:
        net = InProcessNetwork()
        peers = [await _serve(net, f.behind, lie=True), await _serve(net, f.full, lie=True)]
        victim = await _victim(net, f.victim)
        before = set(victim.store.iter_cids())
        with caplog.at_level(logging.INFO, "consortium.node"):
            assert await victim.recover() == 0
        assert victim.ledger.size == 3
        assert set(victim.store.iter_cids()) == before  # not one byte of the lies stored
        assert "do not match" in caplog.text and "not appending entries 3-" in caplog.text
        assert f"no peer sent artifact {f.lost}" in caplog.text
        for n in [*peers, victim]:
            await n.stop()

    asyncio.run(main())


def test_start_fetches_what_the_ledger_references_and_reports_what_no_peer_has(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = _build(tmp_path)
    # node1 loses a leaf of entry 3's artifact of several blocks, and node2 is down.
    with Ledger.open(f.behind / LEDGER_FILE) as led:
        big = next(as_cid(c) for c in led.entry(3).references() if c.codec.name == "dag-pb")
    behind = BlockStore(f.behind / STORE_DIR)
    leaf = list(walk(behind, big))[-1]
    full_store = BlockStore(f.full / STORE_DIR)
    blob = get_bytes(full_store, big)
    behind.delete(leaf)

    async def main() -> None:
        net = InProcessNetwork()
        peer = await _serve(net, f.behind)
        victim = await _victim(net, f.victim)
        with caplog.at_level(logging.INFO, "consortium.node"):
            assert await victim.repair_store() == []  # node1 still has entry 2's artifact
            assert _lacking(f.victim) == []
            # Entries 3-4: node1 cannot send entry 3's big artifact, so none is appended.
            assert await victim.catch_up() == 0
        assert victim.ledger.size == 3
        assert f"no peer sent 1 artifact(s) they reference: {big}" in caplog.text
        # node1's copy repaired: the catch-up goes through, the artifact re-hashed.
        put_bytes(behind, blob)
        assert await victim.catch_up() == 2
        assert get_bytes(victim.store, big) == blob
        # An artifact no reachable peer has is reported by the check every start makes.
        victim.store.delete(big)
        behind.delete(big)
        assert await victim.repair_store() == [big]
        assert f"no peer sent artifact {big}" in caplog.text
        for n in (peer, victim):
            await n.stop()

    asyncio.run(main())


def test_a_catch_up_asks_its_peers_at_once_and_a_dead_one_costs_nothing_more(
    tmp_path: Path,
) -> None:
    """Every peer's sync request is in flight before any answer is used: a start-up does not
    wait for peers one after another (nor for one timeout per dead peer in turn)."""
    from tests.inprocess_cluster import cluster

    async def main() -> None:
        nodes, _, _ = await cluster(tmp_path, 5, seed=71, consent=False)
        try:
            me = nodes[0]
            real = me.transport.request
            in_flight = 0
            most = 0
            answered: list[str] = []

            async def counting(peer: str, method: str, payload: bytes, timeout: float) -> bytes:
                nonlocal in_flight, most
                if method != "sync":
                    return await real(peer, method, payload, timeout)
                in_flight += 1
                most = max(most, in_flight)
                await asyncio.sleep(0)  # let the others start before any answer
                try:
                    if peer == nodes[4].identity.node_id:
                        raise TransportError(f"{peer} is unreachable")  # a dead peer
                    return await real(peer, method, payload, timeout)
                finally:
                    in_flight -= 1
                    answered.append(peer)

            me.transport.request = counting  # type: ignore[method-assign]
            assert await me.catch_up() == 0  # nothing to catch up: every ledger is genesis
            assert most == 4 and len(answered) == 4  # all four asked at once
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(main())
