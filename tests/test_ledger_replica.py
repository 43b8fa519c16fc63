"""Replica sync: accept a quorum-cosigned extension, refuse forks, report equivocation."""

from __future__ import annotations

from pathlib import Path

import pytest
from multiformats import CID, multihash

from consortium.core.errors import ForkError, LedgerError, SignatureError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import CosignedHead, Entry, Ledger, LocalSource, TreeHead, make_record, sync
from consortium.ledger.heads import Cosignature
from consortium.ledger.replica import apply, verify_extension


@pytest.fixture(scope="module")
def members() -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"node{i}") for i in range(4)]


@pytest.fixture(scope="module")
def genesis(members: list[NodeIdentity]) -> Genesis:
    g = Genesis.ceremony("sync", members, [Purpose("research")], 7)
    return g


def _grow(led: Ledger, members: list[NodeIdentity], n: int, tag: str, time: int) -> None:
    g = led.genesis()
    led.append_many([make_record(members[i % 4], "record", {tag: i}, i, g) for i in range(n)])
    for m in members[:3]:  # quorum of 4 is 3
        led.sign_head(m, time)


def test_replica_catches_up_in_steps(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    source = Ledger.create(tmp_path / "src.db", genesis)
    replica = Ledger.create(tmp_path / "rep.db", genesis)
    _grow(source, members, 25, "a", 100)
    res = sync(replica, source)
    assert (res.appended, res.size) == (25, 26)
    assert replica.root() == source.root()
    assert res.head is not None and res.head.head.size == 26
    assert replica.latest_final_head() is not None
    # A second round through the abstract protocol, entries beyond the final head are not taken.
    _grow(source, members, 10, "b", 200)
    source.append(make_record(members[0], "record", {"unsigned": True}, 1, genesis))
    res = sync(replica, LocalSource(source))
    assert (res.appended, replica.size) == (10, 36)
    assert replica.root() == source.root(36)
    assert replica.fsck() == replica.root()
    assert sync(replica, source).appended == 0


def test_no_final_head_means_nothing_to_take(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    source = Ledger.create(tmp_path / "src.db", genesis)
    replica = Ledger.create(tmp_path / "rep.db", genesis)
    source.append_many([make_record(members[0], "record", {"i": i}, i, genesis) for i in range(5)])
    for m in members[:2]:  # quorum - 1
        source.sign_head(m, 1)
    res = sync(replica, source)
    assert res.appended == 0 and res.head is None and replica.size == 1


def test_fork_is_refused_and_nothing_written(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    source = Ledger.create(tmp_path / "src.db", genesis)
    _grow(source, members, 10, "a", 100)
    replica_path = tmp_path / "rep.db"
    replica = Ledger.create(replica_path, genesis)
    replica.append_many(
        [make_record(members[1], "record", {"other": i}, i, genesis) for i in range(3)]
    )
    before = (replica.size, replica.root())
    with pytest.raises(ForkError, match="not an extension"):
        sync(replica, source)
    assert (replica.size, replica.root()) == before
    assert replica.fsck() == before[1]


class LyingSource(LocalSource):
    """Serves a valid proof and head but substitutes the entries."""

    def __init__(self, ledger: Ledger, fake: Ledger) -> None:
        super().__init__(ledger)
        self.fake = fake

    def entries(self, start: int, end: int) -> list[bytes]:
        return [d for _, d in self.fake.raw_entries(start, end)]


def test_entries_not_matching_final_head_are_refused(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    honest = Ledger.create(tmp_path / "h.db", genesis)
    fake = Ledger.create(tmp_path / "f.db", genesis)
    _grow(honest, members, 8, "a", 1)
    fake.append_many([make_record(members[0], "record", {"b": i}, i, genesis) for i in range(8)])
    replica = Ledger.create(tmp_path / "r.db", genesis)
    with pytest.raises(ForkError, match="do not hash"):
        sync(replica, LyingSource(honest, fake))
    assert replica.size == 1


def test_tampered_entry_signature_is_refused(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    source = Ledger.create(tmp_path / "s.db", genesis)
    _grow(source, members, 4, "a", 1)

    class Tampering(LocalSource):
        def entries(self, start: int, end: int) -> list[bytes]:
            out = super().entries(start, end)
            e = source.entry(start + 2)
            sig = bytearray(e.signatures[e.author])
            sig[0] ^= 1
            out[2] = Entry(e.kind, e.author, e.body, {e.author: bytes(sig)}, e.time).data
            return out

    replica = Ledger.create(tmp_path / "r.db", genesis)
    with pytest.raises(SignatureError, match="entry 3"):
        sync(replica, Tampering(source))
    assert replica.size == 1


def test_equivocating_peer_heads_are_recorded(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    source = Ledger.create(tmp_path / "s.db", genesis)
    _grow(source, members, 6, "a", 1)
    replica = Ledger.create(tmp_path / "r.db", genesis)
    sync(replica, source)
    size = replica.size
    lie = TreeHead(size, b"\x13" * 32, 2)

    class Equivocating(LocalSource):
        def cosigned_heads(self) -> list[CosignedHead]:
            return [
                *super().cosigned_heads(),
                CosignedHead(
                    lie, [Cosignature(members[0].node_id, lie.sign(members[0], genesis).signature)]
                ),
            ]

    res = sync(replica, Equivocating(source))
    assert [e.node_id for e in res.equivocations] == [members[0].node_id]
    assert [e.node_id for e in replica.equivocations()] == [members[0].node_id]
    res.equivocations[0].verify(genesis)
    assert all(ch.head.root != lie.root for ch in replica.cosigned_heads())


def test_entries_and_heads_of_another_consortium_are_refused(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    """Consortium B has the very same members as ours; nothing signed for it syncs into ours."""
    other = Genesis.ceremony("sync-b", members, [Purpose("research")], 7)
    # Our consortium's ledger with B's record spliced in (stored unchecked), final heads for us.
    source = Ledger.create(tmp_path / "s.db", genesis)
    source.append_many([make_record(members[0], "record", {"i": i}, i, genesis) for i in range(2)])
    source.append(make_record(members[1], "record", {"i": 2}, 2, other), verify=False)
    for m in members[:3]:
        source.sign_head(m, 5)
    replica = Ledger.create(tmp_path / "r.db", genesis)
    with pytest.raises(SignatureError, match=r"peer.s entry 3: invalid signature .* node1"):
        sync(replica, source)
    assert replica.size == 1

    # Our consortium's entries under heads every member cosigned, but for B: not final here.
    honest = Ledger.create(tmp_path / "h.db", genesis)
    _grow(honest, members, 4, "a", 1)

    class HeadsForB(LocalSource):
        def cosigned_heads(self) -> list[CosignedHead]:
            return [
                CosignedHead(ch.head, [ch.head.sign(m, other) for m in members])
                for ch in super().cosigned_heads()
            ]

    res = sync(replica, HeadsForB(honest))
    assert (res.appended, res.head, replica.size) == (0, None, 1)
    assert sync(replica, honest).appended == 4  # the same heads cosigned for us are final


def test_a_verified_extension_is_written_only_by_apply(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    """Verifying writes nothing (a node fetches artifacts then); apply writes entries and every
    head of the extended log in one go, and refuses if the replica moved in between."""
    source = Ledger.create(tmp_path / "s.db", genesis)
    cid = CID("base32", 1, "raw", multihash.digest(b"model", "sha2-256"))
    for i in range(3):
        source.append(make_record(members[i], "record", {"i": i, "model": cid}, i, genesis))
        for m in members[:3]:
            source.sign_head(m, 10 + i)
    replica = Ledger.create(tmp_path / "r.db", genesis)
    ext = verify_extension(replica, source)
    assert (ext.old, ext.new, [str(c) for c in ext.references()]) == (1, 4, [str(cid)])
    assert sorted(h.head.size for h in ext.heads) == [2, 3, 4]  # each a head of the extension
    assert replica.size == 1 and replica.cosigned_heads() == []
    replica.append(make_record(members[0], "record", {"meanwhile": 1}, 9, genesis))
    with pytest.raises(LedgerError, match="changed meanwhile"):
        apply(replica, ext)
    assert replica.size == 2
    fresh = Ledger.create(tmp_path / "f.db", genesis)
    res = apply(fresh, verify_extension(fresh, source))
    assert (res.appended, fresh.root()) == (3, source.root())
    assert [h.head for h in fresh.cosigned_heads()] == [h.head for h in source.cosigned_heads()]


def test_a_peer_head_without_one_valid_cosignature_is_not_stored(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    """A head is stored with the cosignatures that vouch for it: one that none does would sit
    alone in the replica (which audit refuses as tampering)."""
    source = Ledger.create(tmp_path / "s.db", genesis)
    _grow(source, members, 3, "a", 1)
    early = TreeHead(2, source.root(2), 9)  # a prefix of ours, "cosigned" with a bad signature

    class Forging(LocalSource):
        def cosigned_heads(self) -> list[CosignedHead]:
            bad = CosignedHead(early, [Cosignature(members[0].node_id, bytes(64))])
            return [*super().cosigned_heads(), bad]

    replica = Ledger.create(tmp_path / "r.db", genesis)
    assert sync(replica, Forging(source)).appended == 3
    assert early not in [ch.head for ch in replica.cosigned_heads()]
    assert {h[0] for h in replica.raw_heads()} == {4}
