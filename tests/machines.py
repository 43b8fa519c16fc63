"""Shared by tests: round machines wired together with no network, no torch and no wall clock.

A model is a float32 vector's bytes; FedAvg is the sample-weighted mean; every node "trains" by
adding a node-specific offset. Messages are delivered in FIFO order by `Wire.run`, which can drop
or rewrite them (to play a dishonest member); time moves only when a test sets `Wire.now`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from multiformats import CID

from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.threshold import seeded_bytes
from consortium.ledger.entries import genesis_entry
from consortium.ledger.frontier import Frontier
from consortium.protocol.messages import BeaconShare, Message
from consortium.protocol.randomness import Randomness
from consortium.protocol.round import (
    Action,
    Broadcast,
    CastVote,
    Committed,
    Note,
    PersistVote,
    RoundMachine,
    RoundSettings,
    Send,
    Stopped,
    Train,
)
from consortium.protocol.storage import StorageState, artifact_name
from consortium.store.cid import cid_for

MODEL_SIZE = 8
RUN = "test-run"
CONFIG = {"run": "test"}


def model(values: Sequence[float]) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


def cid_of(data: bytes) -> CID:
    return cid_for(data)


def fedavg(updates: Sequence[tuple[str, int, bytes]]) -> bytes:
    total = sum(n for _, n, _ in updates)
    acc = sum(np.frombuffer(u, np.float32).astype(np.float64) * n for _, n, u in updates)
    return np.asarray(acc / total, dtype=np.float32).tobytes()


class VectorOps:
    """The machine's SecureOps over plain float32 vectors."""

    def delta(self, global_model: bytes, local_model: bytes) -> npt.NDArray[np.float32]:
        g, local = np.frombuffer(global_model, np.float32), np.frombuffer(local_model, np.float32)
        out: npt.NDArray[np.float32] = local - g
        return out

    def apply(self, global_model: bytes, delta: npt.NDArray[np.float64]) -> bytes:
        g = np.frombuffer(global_model, np.float32).astype(np.float64)
        return (g + delta).astype(np.float32).tobytes()


def consortium(n: int, beacon_group: int = 0) -> tuple[list[NodeIdentity], Genesis]:
    """n members; `beacon_group` > 0 names the first that many (by name) the beacon group."""
    ids = [NodeIdentity.generate(f"m{i}", seed=b"machines/%d" % i) for i in range(n)]
    group = [i.node_id for i in ids[:beacon_group]] if beacon_group else None
    genesis = Genesis.ceremony(
        "machines",
        ids,
        [Purpose("research")],
        1,
        random=seeded_bytes(b"machines/%d" % n),
        beacon_members=group,
    )
    return ids, genesis


Filter = Callable[[str, str, Message], list[tuple[str, Message]]]


@dataclass
class Wire:
    """N machines and the messages between them."""

    ids: list[NodeIdentity]
    genesis: Genesis
    machines: dict[str, RoundMachine]
    now: float = 0.0
    queue: deque[tuple[str, str, Message]] = field(default_factory=deque)
    committed: dict[str, list[Committed]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    persisted: dict[str, list[PersistVote]] = field(default_factory=dict)
    trace: list[tuple[str, Action]] = field(default_factory=list)
    #: (sender, recipient, message) -> what is delivered instead (a dishonest sender's view).
    filter: Filter | None = None
    down: set[str] = field(default_factory=set)  # crashed: receive and send nothing
    #: node -> printed CID -> bytes: each node's copies of committed artifacts (what its
    #: `read_artifact` reads to answer storage challenges); a test deletes or damages them.
    stores: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        n: int,
        *,
        secure: bool = False,
        seed: int = 0,
        votes: dict[str, dict[int, CastVote]] | None = None,
        signed_sets: dict[str, dict[tuple[int, int], tuple[str, ...]]] | None = None,
        replicas: int = 0,
        challenge_every: int = 0,
        challenge_artifacts: int = 8,
        committee: int = 0,
        corrupt_fraction: float | None = None,
        min_updates: int = 1,
        beacon_group: int = 0,
    ) -> Wire:
        ids, genesis = consortium(n, beacon_group)
        settings = RoundSettings(
            run_id=RUN,
            config=CONFIG,
            min_updates=min_updates,
            collect_timeout=5.0,
            round_timeout=20.0,
            secure=secure,
            clip=10.0,
            model_size=MODEL_SIZE,
            replicas=replicas,
            challenge_every=challenge_every,
            challenge_artifacts=challenge_artifacts,
            committee=committee,
            corrupt_fraction=corrupt_fraction,
        )
        stores: dict[str, dict[str, bytes]] = {i.node_id: {} for i in ids}
        machines = {
            i.node_id: RoundMachine(
                i,
                genesis,
                settings,
                fedavg,
                cid_of,
                VectorOps(),
                randomness=Randomness.seeded(seed * 1000 + k),
                votes=(votes or {}).get(i.node_id),
                signed_sets=(signed_sets or {}).get(i.node_id),
                read_artifact=stores[i.node_id].get,
            )
            for k, i in enumerate(ids)
        }
        return cls(ids, genesis, machines, stores=stores)

    @property
    def frontier(self) -> Frontier:
        return Frontier.empty().append(genesis_entry(self.genesis).data)

    def name(self, node_id: str) -> str:
        return self.genesis.member(node_id).name

    def by_name(self, name: str) -> str:
        return self.genesis.member_by_name(name).node_id

    def begin(
        self,
        round_no: int = 1,
        start: bytes | None = None,
        storage: StorageState | None = None,
        frontier: Frontier | None = None,
    ) -> None:
        """Begin the round everywhere and exchange the beacon's partials (only those), so every
        live machine knows the leader order and has queued its update, as tests expect."""
        f = frontier or self.frontier
        for nid, m in self.machines.items():
            self._do(
                nid,
                m.begin(round_no, f, self.now, model=start or model([0] * 8), storage=storage),
            )
        self.deliver(BeaconShare)

    def deliver(self, kind: type) -> None:
        """Deliver the queued messages of `kind` (and those they cause), leaving the rest queued
        in order."""
        while True:
            picked = [x for x in self.queue if isinstance(x[2], kind)]
            if not picked:
                return
            rest = [x for x in self.queue if not isinstance(x[2], kind)]
            self.queue = deque(rest)
            for sender, to, msg in picked:
                self._deliver(sender, to, msg)

    def _do(self, nid: str, actions: list[Action]) -> None:
        for a in actions:
            self.trace.append((nid, a))
            if nid in self.down:
                continue
            if isinstance(a, Send):
                self.queue.append((nid, a.to, a.message))
            elif isinstance(a, Broadcast):
                for other in self.machines:
                    if other != nid:
                        self.queue.append((nid, other, a.message))
            elif isinstance(a, Train):
                self._train(nid, a.round)
            elif isinstance(a, PersistVote):
                self.persisted.setdefault(nid, []).append(a)
            elif isinstance(a, Committed):
                self.committed.setdefault(nid, []).append(a)
                store = self.stores.setdefault(nid, {})
                for data in (a.proposal.model, a.proposal.transcript):
                    if data:
                        store[artifact_name(cid_of(data))] = data
            elif isinstance(a, Note):
                self.notes.setdefault(nid, []).append(a.text)
            elif isinstance(a, Stopped):
                self.notes.setdefault(nid, []).append(a.reason)

    def _train(self, nid: str, round_no: int) -> None:
        m = self.machines[nid]
        k = sorted(self.machines).index(nid)
        local = np.frombuffer(m.s.model, np.float32) + np.float32(0.1 * (k + 1))
        self._do(nid, m.on_trained(10 + k, local.tobytes(), {"loss": 1.0}, self.now))

    def run(self, limit: int = 100_000) -> None:
        """Deliver until no message is in flight."""
        for _ in range(limit):
            if not self.queue:
                return
            self._deliver(*self.queue.popleft())
        raise AssertionError("messages kept flowing")

    def _deliver(self, sender: str, to: str, msg: Message) -> None:
        if sender in self.down or to in self.down:
            return
        deliveries = [(to, msg)] if self.filter is None else self.filter(sender, to, msg)
        for recipient, m in deliveries:
            self._do(recipient, self.machines[recipient].on_message(sender, m, self.now))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        for nid, m in self.machines.items():
            self._do(nid, m.tick(self.now))
        self.run()

    def settle(self, step: float = 1.0, limit: float = 200.0) -> None:
        """Run, then let virtual time pass in steps until every live machine committed."""
        self.run()
        end = self.now + limit
        live = [n for n in self.machines if n not in self.down]
        while not all(self.committed.get(n) for n in live):
            assert self.now < end, f"no commit by t={self.now}: {self.notes}"
            self.tick(step)

    def entry_bytes(self, nid: str) -> bytes:
        return self.committed[nid][-1].proposal.entry


def all_notes(wire: Wire) -> str:
    return "\n".join(t for texts in wire.notes.values() for t in texts)


def first(xs: Sequence[Any]) -> Any:
    return xs[0]
