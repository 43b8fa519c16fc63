"""Hostile peers against a running Node: fuzzed and mutated requests on every method it serves.

Five members, four honest nodes running a SecAgg+ round; the fifth member ("mallory") is the
attacker and has no node, only its authenticated node id. Virtual time stands still while she
attacks, so each target stays where the attack found it: the leader collecting updates, the
leader in SecAgg+, and a participant of an attempt mallory leads. Every request must be answered
or refused with a typed error (`PeerRefused` over the transport, or a refusal Note for a round
message), never an internal error; afterwards no honest ledger changed, the nodes still serve
honest peers, and the round completes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from consortium.core.encoding import Domain, decode, encode
from consortium.core.errors import PeerRefused, TransportError
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import make_record
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.protocol.messages import (
    Commit,
    Proposal,
    Propose,
    SecAgg,
    StartRun,
    StorageAnswers,
    Update,
    Vote,
    VoteReport,
    encode_message,
)
from consortium.protocol.requests import ArtifactRequest, SyncRequest
from consortium.protocol.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    MaskedInput,
    NeighbourKeys,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from consortium.protocol.secure_round import START, secagg_round_id
from consortium.protocol.storage import HolderAnswer, StorageProof
from consortium.store.cid import cid_for
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport
from tests.inprocess_cluster import Clock, drive, run_config

SEED = 11  # reproducible keys: with it, attempt 0 of round 1 is led by a running node
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PER_TYPE = settings(FUZZ, max_examples=25)


class Hostile:
    """Three running nodes and an attacker: a member without a node, and an outsider."""

    def __init__(
        self,
        nodes: list[Node],
        net: InProcessNetwork,
        clock: Clock,
        run: RunConfig,
        mallory: NodeIdentity,
    ) -> None:
        self.nodes, self.net, self.clock, self.run = nodes, net, clock, run
        self.mallory_identity = mallory
        self.mallory = mallory.node_id
        self.outsider = NodeIdentity.generate("outsider", seed=b"outsider").node_id
        machine = nodes[0].machine
        assert machine is not None
        by_id = {n.identity.node_id: n for n in nodes}
        assert machine.leader() in by_id, "attempt 0 must be led by a running node"
        self.leader = by_id[machine.leader()]
        self.run_id = self.run.run_id()

    def beacon(self) -> bytes:
        """Round 1's beacon (public once made): what SecAgg+ round ids derive from."""
        machine = self.leader.machine
        assert machine is not None and machine.beacon is not None
        return machine.beacon

    async def ask(self, sender: str, method: str, payload: bytes, to: Node | None = None) -> bytes:
        """One request to `to` (the leader); an internal error (a handler bug) fails the test."""
        transport = InProcessTransport(self.net, sender)
        target = (to or self.leader).identity.node_id
        try:
            return await transport.request(target, method, payload, 30.0)
        except PeerRefused:
            raise
        except TransportError as exc:
            cause = exc.__cause__
            raise AssertionError(f"{method} not refused cleanly: {cause!r}") from cause

    def ids(self) -> list[str]:
        return [m.node_id for m in self.leader.genesis.members]


async def _hostile(root: Path) -> Hostile:
    # Five members: four honest nodes reach the SecAgg+ floor (4 at n = 5) without mallory.
    dirs = create_consortium(root, 5, alpha=0.5, seed=SEED, reproducible=True, consent=False)
    net, clock = InProcessNetwork(), Clock()
    nodes = []
    for d in dirs[:4]:
        ident = NodeIdentity.load(d)
        cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.02})
        nodes.append(Node(d, ident, InProcessTransport(net, ident.node_id), cfg, clock=clock))
    for node in nodes:
        await node.start()
    run = run_config(1, SEED, secure="secagg+")
    report = await nodes[0].propose_run(run)  # agreed by the four honest members
    assert report["started"], report
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    while any(n.machine is None or n.machine.beacon is None for n in nodes):
        assert loop.time() < end, "the round's beacon was not made"
        await asyncio.sleep(0.02)
    h = Hostile(nodes, net, clock, run, NodeIdentity.load(dirs[4]))
    # Until the leader holds the four honest updates; with time frozen it waits for mallory's.
    machine = h.leader.machine
    assert machine is not None
    while len(machine.s.updates) < 4:
        assert loop.time() < end, "honest updates did not arrive"
        await asyncio.sleep(0.02)
    return h


@contextmanager
def running(root: Path) -> Iterator[tuple[Hostile, Callable[[Coroutine[Any, Any, Any]], Any]]]:
    """The hostile setting and a function running coroutines in its one event loop; fails if
    any task of a node died with an exception."""
    with asyncio.Runner() as runner:
        crashes: list[dict[str, Any]] = []
        runner.get_loop().set_exception_handler(lambda _loop, ctx: crashes.append(ctx))
        h = runner.run(_hostile(root))
        try:
            yield h, runner.run
            assert h.leader._ticker is not None and not h.leader._ticker.done()
            assert not crashes, crashes
        finally:
            for n in h.nodes:
                runner.run(n.stop())


async def _finish(h: Hostile) -> None:
    """The honest nodes finish the round (virtual time moves past deadlines) with one root."""
    await drive(h.nodes, h.net, h.clock)
    assert {n.ledger.root() for n in h.nodes} == {h.nodes[0].ledger.root()}
    assert all(n.ledger.size == 3 for n in h.nodes)  # genesis, run-config, round 1


# -- what hostile bytes look like -----------------------------------------------------------------

LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.binary(max_size=40)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
#: Oversized fields: past every bound the decoders set (entries, signatures, lists, maps, ids).
HUGE = st.sampled_from(
    [
        bytes(4 * 1024 * 1024 + 1),
        b"\xff" * 65,
        "n" * 10_000,
        list(range(10_001)),
        {str(i): b"" for i in range(10_001)},
        2**64 - 1,
        -(2**63),
    ]
)
#: CBOR heads that announce more than follows: a decoder must not allocate or loop on them.
LYING_HEADS = [
    b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # bytes of length 2**64-1
    b"\x7b\x00\x00\x00\x01\x00\x00\x00\x00",  # text of length 2**32
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # array of 2**64-1 items
    b"\xbb\x00\x00\x00\x00\x10\x00\x00\x00",  # map of 2**28 pairs
    b"\xa2\x64type\x66update\x64body\xbf\xff",  # indefinite-length map (not dag-cbor)
    b"\xd8\x2a\x45\x00\x01\x55\x12\x00",  # a tag-42 CID that is not one
    b"",
]


def _mutate(value: Any, draw: Callable[[st.SearchStrategy[Any]], Any], rate: int) -> Any:
    """Each field of a valid body, recursively: kept, or with probability `rate`% dropped,
    retyped, blown up or mutated inside; sometimes a stray field is added."""
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if draw(st.integers(0, 99)) >= rate:
                out[key] = _mutate(v, draw, rate)
                continue
            how = draw(st.sampled_from(["drop", "random", "huge", "inner"]))
            if how == "random":
                out[key] = draw(VALUES)
            elif how == "huge":
                out[key] = draw(HUGE)
            elif how == "inner":
                out[key] = _mutate(v, draw, 100)
        if draw(st.integers(0, 99)) < rate:
            out[draw(st.text(max_size=8))] = draw(VALUES)
        return out
    if isinstance(value, list):
        return [_mutate(v, draw, rate) for v in value]
    if isinstance(value, dict | list) or draw(st.integers(0, 99)) >= rate:
        return value
    return draw(VALUES)


def _templates(h: Hostile, attempt: int, to: Node) -> list[tuple[str, dict[str, Any]]]:
    """One well-formed body of every message type of `attempt`, as mallory could send it."""
    run, a, n = h.run_id, to.identity.node_id, attempt
    b = next(i for i in h.ids() if i not in (a, h.mallory))
    rid = secagg_round_id(run, 1, n, h.beacon())
    k32, sig = bytes(range(32)), bytes(64)
    report = VoteReport(run, 1, n, b, 2, k32, sig)
    # A round entry mallory really signed, with a record that is not one.
    entry = make_record(h.mallory_identity, "round", {"round": 1}, 1, h.leader.genesis)
    proposal = Proposal(entry.to_bytes(), 2, k32, 1, b"model", b"")
    samples = {nd.identity.node_id: nd.machine.s.local.num_samples for nd in h.nodes}  # type: ignore[union-attr]
    secagg = [
        {START: {"participants": h.ids(), "samples": {h.mallory: 10, **samples}}},
        AdvertiseKeys(rid, h.mallory, k32, bytes(32)).to_body(),
        NeighbourKeys(rid, a, ((b, k32, k32, sig),)).to_body(),
        EncryptedShares(rid, h.mallory, k32, ((a, b"ct"),)).to_body(),
        ShareDelivery(rid, a, ((b, b"ct"),)).to_body(),
        MaskedInput(rid, h.mallory, bytes(40)).to_body(),
        UnmaskRequest(rid, a, (a, b), (h.mallory,)).to_body(),
        UnmaskResponse(rid, h.mallory, ((a, b"s"),), ((b, b"k"),)).to_body(),
    ]
    msgs: list[Any] = [
        StartRun(h.run.body()),
        Update(run, 1, n, 10, b"", {"loss": 0.5}, None, None, [], report),
        Update(run, 1, n, 10, b"", {}, proposal),
        Propose(run, 1, n, proposal, (report,)),
        Vote(run, 1, 2, k32, sig),
        Commit(run, 1, proposal, {b: sig}),
        *(SecAgg(run, 1, n, body) for body in secagg),
        StorageAnswers(
            run,
            1,
            n,
            (HolderAnswer(str(cid_for(b"x")), h.mallory, (StorageProof(0, k32, (k32,)),)),),
        ),
    ]
    return [(m.TYPE, m.to_body()) for m in msgs]


@st.composite
def hostile_messages(draw: Any, template: tuple[str, dict[str, Any]]) -> bytes:
    kind, body = template
    # Mostly near-valid messages, so that they get past decoding into the round's handlers.
    rate = draw(st.sampled_from([0, 3, 3, 10, 30, 100]))
    envelope: dict[str, Any] = {"type": kind, "body": _mutate(body, draw, rate)}
    if draw(st.integers(0, 9)) == 0:  # the envelope itself: wrong type name, extra or no keys
        envelope = _mutate(envelope, draw, 50)
    data = encode(envelope)
    how = draw(st.sampled_from(["as-is"] * 5 + ["flip", "cut", "splice"]))
    if how == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "splice":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(max_size=16) | st.sampled_from(LYING_HEADS)) + data[i:]
    return data


def _bad_cids() -> list[str]:
    good = cid_for(b"never stored")
    return [
        str(good),  # well-formed, not in the store
        str(good)[:-3],  # truncated
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",  # CIDv0
        str(good.set(base="base58btc")),  # another base: normalised, still not stored
        str(good.set(codec="dag-pb")),  # a codec the store never writes
        "bafkqaaa",  # identity hash: would "verify" anything
        "",
        "b" + "a" * 120,
    ]


# -- the tests ------------------------------------------------------------------------------------


async def _advance_to(h: Hostile, attempt: int) -> None:
    """Let round timeouts pass until every honest node is at `attempt` of round 1."""
    loop = asyncio.get_running_loop()
    for _ in range(attempt):
        target = min(n.machine.s.attempt for n in h.nodes if n.machine) + 1
        h.clock.now += h.run.round_timeout + 1
        end = loop.time() + 30
        while any(n.machine is None or n.machine.s.attempt < target for n in h.nodes):
            assert loop.time() < end, "nodes did not move to the next attempt"
            await asyncio.sleep(0.02)


def _state(nodes: list[Node]) -> list[tuple[int, bytes]]:
    return [(n.ledger.size, n.ledger.root()) for n in nodes]


def test_fuzzed_requests_are_refused_and_the_node_keeps_serving(tmp_path: Path) -> None:
    """Fuzz the leader while it collects updates and while it runs SecAgg+, then a participant
    while mallory leads, then every other method; all honest ledgers stay as they were."""
    with running(tmp_path) as (h, run):
        before = _state(h.nodes)
        senders = st.sampled_from([h.mallory, h.mallory, h.mallory, h.outsider])
        outcomes = {"answered": 0, "refused": 0}

        def ask(sender: str, method: str, payload: bytes, to: Node | None = None) -> None:
            try:
                run(h.ask(sender, method, payload, to))
                outcomes["answered"] += 1
            except PeerRefused as exc:
                assert "internal error" not in str(exc)
                outcomes["refused"] += 1

        def fuzz_messages(to: Node, attempt: int) -> None:
            for template in _templates(h, attempt, to):  # each type on its own: none is starved

                @PER_TYPE
                @given(sender=senders, payload=hostile_messages(template))
                def go(sender: str, payload: bytes) -> None:
                    ask(sender, "msg", payload, to)

                go()

        leader = h.leader.machine
        assert leader is not None
        fuzz_messages(h.leader, 0)
        # Mallory's own update completes the member set: the leader starts SecAgg+ with her.
        ask(h.mallory, "msg", encode_message(Update(h.run_id, 1, 0, 10, b"", {})))
        assert leader.s.leading is not None
        fuzz_messages(h.leader, 0)
        # Now mallory leads an attempt: a participant takes her SecAgg+ and proposals.
        mine = next(a for a in range(4) if leader.leader(a) == h.mallory)
        run(_advance_to(h, mine))
        participant = h.nodes[1] if h.nodes[0] is h.leader else h.nodes[0]
        fuzz_messages(participant, mine)

        request_bodies = st.one_of(
            st.builds(lambda v: encode({"from": v}), VALUES | HUGE),
            st.builds(lambda v: encode({"cid": v}), st.sampled_from(_bad_cids()) | VALUES),
            st.builds(encode, VALUES),
            st.binary(max_size=64),
            st.sampled_from(LYING_HEADS),
        )

        @FUZZ
        @given(
            sender=senders,
            method=st.sampled_from(["sync", "artifact", "sync", "artifact", "status", "model"]),
            payload=request_bodies,
        )
        def other_methods(sender: str, method: str, payload: bytes) -> None:
            ask(sender, method, payload)

        other_methods()
        assert outcomes["refused"] > 100 and outcomes["answered"] > 10, outcomes
        # Nothing reached a ledger, and the leader's still checks out.
        assert _state(h.nodes) == before
        assert h.leader.ledger.fsck() == before[h.nodes.index(h.leader)][1]
        # Honest peers are still served: catch-up, an artifact, and the round itself.
        honest = participant.identity.node_id
        reply = decode(run(h.ask(honest, "sync", SyncRequest(0).to_bytes())))
        assert reply["size"] == h.leader.ledger.size
        model = cid_for(h.leader.global_model)
        data = run(h.ask(honest, "artifact", ArtifactRequest(model).to_bytes()))
        assert data == h.leader.global_model
        run(_finish(h))


DAG_JSON = CID("base32", 1, "dag-json", multihash.digest(b"x", "sha2-256"))
MALFORMED = [
    ("sync", encode({"from": "0"}), "field 'from' must be an integer"),
    ("sync", encode({"from": -1}), "field 'from' must be an integer"),
    ("sync", encode({"from": 10**6}), "cannot serve entries from 1000000"),
    ("sync", encode({"start": 0}), r"sync request must be a map \{from\}"),
    ("sync", encode([0]), r"sync request must be a map \{from\}"),
    ("sync", encode({"from": 0, "and": 1}), r"sync request must be a map \{from\}"),
    ("sync", LYING_HEADS[0], "undecodable sync request"),
    ("sync", encode({"from": 0, "pad": bytes(5000)}), "exceeds 4096"),
    ("artifact", encode({"cid": 7}), "field 'cid' must be a string"),
    ("artifact", encode({"cid": "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"}), "not in the"),
    ("artifact", encode({"cid": str(DAG_JSON)}), "has codec dag-json"),
    ("artifact", encode({"cid": "bafkqaaa"}), "only sha2-256 is accepted"),
    ("artifact", encode({"cid": str(cid_for(b"absent"))}), "is not in the store"),
    ("artifact", encode({}), r"artifact request must be a map \{cid\}"),
    ("status", b"", "unknown method 'status'"),
]


def test_malformed_requests_are_refused_by_name(tmp_path: Path) -> None:
    """Each shape check of `sync` and `artifact`: removing one lets its case through (or into a
    KeyError/TypeError, which the transport reports as an internal error)."""
    with running(tmp_path) as (h, run):
        for method, payload, reason in MALFORMED:
            with pytest.raises(PeerRefused, match=reason):
                run(h.ask(h.mallory, method, payload))


def test_outsiders_are_refused_on_every_method(tmp_path: Path) -> None:
    with running(tmp_path) as (h, run):
        for method, payload in [
            ("sync", SyncRequest(0).to_bytes()),
            ("artifact", ArtifactRequest(cid_for(h.leader.global_model)).to_bytes()),
            ("msg", encode_message(StartRun(h.run.body()))),
        ]:
            with pytest.raises(PeerRefused, match=f"refused '{method}' from non-member"):
                run(h.ask(h.outsider, method, payload))


def _notes(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_a_member_cannot_speak_for_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mallory's messages that name another member as their author are refused, naming her;
    the round still completes without her."""
    caplog.set_level(logging.INFO, logger="consortium.node")
    with running(tmp_path) as (h, run):
        ident = h.mallory_identity
        name = ident.name
        victim = next(i for i in h.ids() if i not in (h.mallory, h.leader.identity.node_id))
        digest = h.leader.genesis.digest()

        def report(node: str) -> VoteReport:
            r = VoteReport(h.run_id, 1, 0, node, 2, b"")
            sig = ident.sign(Domain.ROUND, r.signed_body(), digest)
            return VoteReport(h.run_id, 1, 0, node, 2, b"", sig)

        def update(r: VoteReport | None) -> bytes:
            return encode_message(Update(h.run_id, 1, 0, 10, b"", {}, report=r))

        # A vote report signed by mallory but naming another member.
        run(h.ask(h.mallory, "msg", update(report(victim))))
        assert f"refused update from {name}: vote report is not the sender's" in _notes(caplog)
        # Her own update is fine: with it every member reported, and SecAgg+ starts.
        run(h.ask(h.mallory, "msg", update(report(h.mallory))))
        machine = h.leader.machine
        assert machine is not None and machine.phase.value == "secure-aggregation"
        # A SecAgg+ message whose body says it is from another participant.
        rid = secagg_round_id(h.run_id, 1, 0, h.beacon())
        keys = AdvertiseKeys(rid, victim, bytes(32), bytes(range(32)))
        run(h.ask(h.mallory, "msg", encode_message(SecAgg(h.run_id, 1, 0, keys.to_body()))))
        assert f"secure aggregation refused {name}: message claims to be from {victim}" in (
            _notes(caplog)
        )
        run(_finish(h))
