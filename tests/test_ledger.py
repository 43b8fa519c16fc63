"""Ledger entries, tree heads, finality, equivocation and the SQLite log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from multiformats import CID, multihash

from consortium.core.encoding import Domain, encode
from consortium.core.errors import ForkError, LedgerError, ProofError, SignatureError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import (
    CosignedHead,
    Entry,
    Equivocation,
    Ledger,
    TreeHead,
    find_equivocation,
    genesis_entry,
    make_record,
    merkle,
    verify_consistency,
    verify_inclusion,
)
from consortium.ledger.heads import Cosignature

N_MEMBERS = 4  # quorum_for(4) == 3


@pytest.fixture(scope="module")
def members() -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"node{i}") for i in range(N_MEMBERS)]


@pytest.fixture(scope="module")
def genesis(members: list[NodeIdentity]) -> Genesis:
    g = Genesis.ceremony("test", members, [Purpose("research", 1.0)], 1000)
    return g


@pytest.fixture
def ledger(tmp_path: Path, genesis: Genesis) -> Ledger:
    return Ledger.create(tmp_path / "ledger.db", genesis)


def _cid(data: bytes) -> CID:
    return CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))


# -- entries ---------------------------------------------------------------------------------------


def test_record_roundtrip_verify_and_references(
    members: list[NodeIdentity], genesis: Genesis
) -> None:
    a, b = _cid(b"model"), _cid(b"update")
    e = make_record(members[0], "round", {"model": a, "nested": {"updates": [b, 3]}}, 42, genesis)
    e.verify(genesis)
    back = Entry.from_bytes(e.data)
    assert back == e
    assert back.data == encode(
        {
            "kind": "round",
            "author": members[0].node_id,
            "time": 42,
            "body": e.body,
            "signatures": e.signatures,
        }
    )
    assert back.references() == [a, b]
    assert e.references() == [a, b]


def test_tampered_record_is_rejected(members: list[NodeIdentity], genesis: Genesis) -> None:
    e = make_record(members[1], "record", {"x": 1}, 5, genesis)
    forged_body = Entry(e.kind, e.author, {"x": 2}, e.signatures, e.time)
    with pytest.raises(SignatureError, match="node1"):
        forged_body.verify(genesis)
    sig = bytearray(e.signatures[e.author])
    sig[0] ^= 1
    with pytest.raises(SignatureError, match="invalid signature"):
        Entry(e.kind, e.author, e.body, {e.author: bytes(sig)}, e.time).verify(genesis)
    outsider = NodeIdentity.generate("outsider")
    with pytest.raises(SignatureError, match="not a member"):
        make_record(outsider, "record", {}, 1, genesis).verify(genesis)
    with pytest.raises(SignatureError, match="not signed by its author"):
        Entry("record", members[0].node_id, {}, {members[1].node_id: b"x" * 64}, 1).verify(genesis)


def test_genesis_entry_verifies_and_detects_missing_signature(
    members: list[NodeIdentity], genesis: Genesis
) -> None:
    ge = genesis_entry(genesis)
    ge.verify(genesis)
    sigs = dict(ge.signatures)
    sigs.pop(members[2].node_id)
    with pytest.raises(SignatureError, match="node2"):
        Entry(ge.kind, "", ge.body, sigs, ge.time).verify(genesis)


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "record", "author": "a", "time": 1, "body": {}},
        {"kind": "record", "author": "a", "time": "1", "body": {}, "signatures": {}},
        {"kind": "", "author": "a", "time": 1, "body": {}, "signatures": {}},
        {"kind": "record", "author": "a", "time": 1, "body": [], "signatures": {}},
        [1, 2],
    ],
)
def test_malformed_entry_bytes_are_refused(obj: object) -> None:
    with pytest.raises(LedgerError):
        Entry.from_bytes(encode(obj))
    with pytest.raises(LedgerError):
        Entry.from_bytes(b"\xff\x00garbage")


# -- heads -----------------------------------------------------------------------------------------


def _cosigned(head: TreeHead, signers: list[NodeIdentity], genesis: Genesis) -> CosignedHead:
    return CosignedHead(head, [head.sign(m, genesis) for m in signers])


def test_finality_needs_exactly_quorum(members: list[NodeIdentity], genesis: Genesis) -> None:
    assert genesis.quorum == 3
    head = TreeHead(5, b"\x11" * 32, 9)
    assert not _cosigned(head, members[:2], genesis).is_final(genesis)
    assert _cosigned(head, members[:3], genesis).is_final(genesis)
    # Duplicates and invalid signatures do not count towards the quorum.
    dup = _cosigned(head, members[:2], genesis)
    dup.cosignatures.append(head.sign(members[0], genesis))
    dup.cosignatures.append(Cosignature(members[3].node_id, b"\x00" * 64))
    assert dup.valid_signers(genesis) == {members[0].node_id, members[1].node_id}
    assert not dup.is_final(genesis)
    with pytest.raises(SignatureError, match="node3"):
        dup.check(genesis)
    # A signature over another head's body is not a signature on this head.
    other = TreeHead(5, b"\x11" * 32, 10)
    moved = CosignedHead(head, [other.sign(m, genesis) for m in members[:3]])
    assert not moved.is_final(genesis)


def test_equivocation_evidence_roundtrip(members: list[NodeIdentity], genesis: Genesis) -> None:
    a = _cosigned(TreeHead(7, b"\x01" * 32, 1), members[:3], genesis)
    b = _cosigned(TreeHead(7, b"\x02" * 32, 2), members[2:], genesis)
    ev = find_equivocation(a, b, genesis)
    assert ev is not None and ev.node_id == members[2].node_id
    ev.verify(genesis)
    back = Equivocation.from_bytes(ev.to_bytes())
    back.verify(genesis)
    assert back.to_bytes() == ev.to_bytes()
    # Not equivocation: same root, or different sizes, or no common signer.
    assert (
        find_equivocation(a, _cosigned(TreeHead(7, b"\x01" * 32, 5), members, genesis), genesis)
        is None
    )
    assert (
        find_equivocation(a, _cosigned(TreeHead(8, b"\x02" * 32, 2), members, genesis), genesis)
        is None
    )
    lone = _cosigned(TreeHead(7, b"\x02" * 32, 2), members[3:], genesis)
    assert find_equivocation(a, lone, genesis) is None
    # Forged evidence (signature not by the accused) fails third-party verification.
    forged = Equivocation(
        members[0].node_id,
        a.head,
        a.signatures()[members[0].node_id],
        b.head,
        b.signatures()[members[2].node_id],
    )
    with pytest.raises(SignatureError, match="node0"):
        forged.verify(genesis)


# -- the log ---------------------------------------------------------------------------------------


def test_create_open_and_refusals(tmp_path: Path, genesis: Genesis) -> None:
    path = tmp_path / "l.db"
    with Ledger.create(path, genesis) as led:
        assert led.size == 1
        assert led.entry(0).kind == "genesis"
        assert led.root() == merkle.leaf_hash(genesis_entry(genesis).data)
    with pytest.raises(LedgerError, match="already exists"):
        Ledger.create(path, genesis)
    with Ledger.open(path) as led:
        assert led.genesis().digest() == genesis.digest()
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match="not a consortium ledger"):
        Ledger.open(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.close()
    with pytest.raises(LedgerError, match="not a consortium ledger"):
        Ledger.open(other)
    unsigned = Genesis.create("x", genesis.members, genesis.purposes, 1)
    with pytest.raises(Exception, match="has not signed"):
        Ledger.create(tmp_path / "u.db", unsigned)
    assert not (tmp_path / "u.db").exists()


def test_append_proofs_and_reopen(
    tmp_path: Path, members: list[NodeIdentity], ledger: Ledger, genesis: Genesis
) -> None:
    records = [make_record(members[i % 4], "record", {"i": i}, i, genesis) for i in range(40)]
    assert ledger.append(records[0]) == 1
    assert ledger.append_many(records[1:]) == 2
    assert ledger.size == 41
    datas = [d for _, d in ledger.raw_entries()]
    leaves = [merkle.leaf_hash(d) for d in datas]
    for size in range(1, 42):
        assert ledger.root(size) == merkle.root_from_leaf_hashes(leaves[:size])
    for size in (1, 2, 7, 16, 33, 41):
        for index in range(0, size, 3):
            verify_inclusion(
                index, size, leaves[index], ledger.inclusion_proof(index, size), ledger.root(size)
            )
        for old in range(1, size + 1, 4):
            verify_consistency(
                old, size, ledger.root(old), ledger.root(size), ledger.consistency_proof(old, size)
            )
    with pytest.raises(ProofError):
        verify_inclusion(3, 41, leaves[4], ledger.inclusion_proof(3, 41), ledger.root())
    assert [e.body["i"] for e in ledger.iter_entries(5, 8)] == [4, 5, 6]
    assert ledger.fsck() == ledger.root()
    root = ledger.root()
    ledger.close()
    with Ledger.open(ledger.path) as again:
        assert again.size == 41 and again.root() == root
        again.append(make_record(members[0], "record", {"i": 99}, 99, genesis))
        assert again.fsck() == again.root()


def test_append_refuses_bad_entries_atomically(members: list[NodeIdentity], ledger: Ledger) -> None:
    good = make_record(members[0], "record", {"ok": True}, 1, ledger.genesis())
    bad = Entry(good.kind, good.author, {"ok": False}, good.signatures, good.time)
    with pytest.raises(SignatureError):
        ledger.append_many([good, bad])
    with pytest.raises(LedgerError, match="genesis"):
        ledger.append(genesis_entry(ledger.genesis()))
    assert ledger.size == 1
    assert ledger.fsck() == ledger.root()


def test_entries_and_their_heads_append_in_one_transaction(
    members: list[NodeIdentity], ledger: Ledger, genesis: Genesis
) -> None:
    entries = [make_record(members[i], "record", {"n": i}, i, genesis) for i in range(3)]
    # The heads the log will have once the entries are in: computed on a scratch copy.
    frontier = ledger.frontier()
    for e in entries:
        frontier = frontier.append(e.data)
    head = TreeHead(frontier.size, frontier.root(), 9)
    cosigned = CosignedHead(head, [head.sign(m, genesis) for m in members[:3]])
    wrong = TreeHead(frontier.size, b"\x55" * 32, 9)
    bad = CosignedHead(wrong, [wrong.sign(members[0], genesis)])
    root = ledger.root()
    with pytest.raises(ForkError, match="not a head of this log"):
        ledger.append_many(entries, heads=[cosigned, bad])
    forged = CosignedHead(head, [Cosignature(members[3].node_id, b"\x00" * 64)])
    with pytest.raises(SignatureError):
        ledger.append_many(entries, heads=[cosigned, forged])
    with pytest.raises(LedgerError, match="expected 2"):
        ledger.append_many(entries, heads=[cosigned], expect_size=2)
    assert (ledger.size, ledger.root(), ledger.cosigned_heads()) == (1, root, [])  # nothing
    assert ledger.append_many(entries, heads=[cosigned], expect_size=1) == 1
    final = ledger.latest_final_head()
    assert ledger.size == 4 and final is not None and final.head == head
    assert sorted(final.signatures().items()) == sorted(cosigned.signatures().items())
    assert ledger.fsck() == head.root


def test_cosign_finality_and_equivocation_in_ledger(
    members: list[NodeIdentity], ledger: Ledger, genesis: Genesis
) -> None:
    ledger.append(make_record(members[0], "record", {"n": 1}, 1, genesis))
    head = ledger.head(50)
    for m in members[:2]:
        sig = head.sign(m, genesis)
        ledger.add_cosignature(head, sig.node_id, sig.signature)
    assert ledger.latest_final_head() is None  # quorum - 1
    sig = head.sign(members[2], genesis)
    ledger.add_cosignature(head, sig.node_id, sig.signature)
    final = ledger.latest_final_head()
    assert final is not None and final.head == head and final.is_final(genesis)
    # A tampered cosignature is refused and not stored.
    bad = bytearray(head.sign(members[3], genesis).signature)
    bad[5] ^= 0xFF
    with pytest.raises(SignatureError, match="node3"):
        ledger.add_cosignature(head, members[3].node_id, bytes(bad))
    assert len(ledger.cosigned_heads()[0].cosignatures) == 3
    # node1 signs a different root for the same size: refused as a fork, evidence recorded.
    liar = TreeHead(head.size, b"\x66" * 32, 51)
    with pytest.raises(ForkError, match="node1"):
        ledger.add_cosignature(liar, members[1].node_id, liar.sign(members[1], genesis).signature)
    evs = ledger.equivocations()
    assert len(evs) == 1 and evs[0].node_id == members[1].node_id
    evs[0].verify(genesis)
    # node3 never signed the real head: a conflicting head from it is a fork but no equivocation.
    with pytest.raises(ForkError):
        ledger.add_cosignature(liar, members[3].node_id, liar.sign(members[3], genesis).signature)
    assert len(ledger.equivocations()) == 1
    with pytest.raises(LedgerError, match="beyond"):
        future = TreeHead(99, b"\x01" * 32, 1)
        ledger.add_cosignature(
            future, members[0].node_id, future.sign(members[0], genesis).signature
        )


def test_sign_head_signature_domain(members: list[NodeIdentity], ledger: Ledger) -> None:
    ch = ledger.sign_head(members[0], 7)
    sig = ch.signatures()[members[0].node_id]
    from consortium.core.identity import is_valid_signature

    digest = ledger.genesis().digest()
    assert is_valid_signature(members[0].public_key, Domain.TREE_HEAD, ch.head.body(), sig, digest)
    assert not is_valid_signature(members[0].public_key, Domain.RECORD, ch.head.body(), sig, digest)


def test_fsck_detects_tampered_storage(members: list[NodeIdentity], ledger: Ledger) -> None:
    g = ledger.genesis()
    ledger.append_many([make_record(members[0], "record", {"i": i}, i, g) for i in range(9)])
    path = ledger.path
    ledger.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE entries SET data=? WHERE idx=4", (b"tampered",))
    conn.commit()
    conn.close()
    with Ledger.open(path) as led, pytest.raises(LedgerError, match="disagrees"):
        led.fsck()


# -- consortium binding ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genesis_b(members: list[NodeIdentity]) -> Genesis:
    """Consortium B: the very same members (keys) as `genesis`, another manifest."""
    g = Genesis.ceremony("test-b", members, [Purpose("research", 1.0)], 1000)
    return g


def test_a_record_of_one_consortium_is_refused_in_another(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis, genesis_b: Genesis
) -> None:
    assert genesis.digest() != genesis_b.digest()
    e = make_record(members[0], "record", {"x": 1}, 5, genesis)
    e.verify(genesis)
    with pytest.raises(SignatureError, match=r"invalid signature .* node0"):
        e.verify(genesis_b)
    with Ledger.create(tmp_path / "b.db", genesis_b) as ledger_b:
        with pytest.raises(SignatureError, match="node0"):
            ledger_b.append(e)
        assert ledger_b.size == 1
        ledger_b.append(make_record(members[0], "record", {"x": 1}, 5, genesis_b))
        assert ledger_b.size == 2


def test_a_head_cosigned_in_one_consortium_is_refused_in_another(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis, genesis_b: Genesis
) -> None:
    with Ledger.create(tmp_path / "b.db", genesis_b) as ledger_b:
        ledger_b.append(make_record(members[0], "record", {"x": 1}, 5, genesis_b))
        head = ledger_b.head(9)
        in_a = _cosigned(head, members, genesis)  # every member, but for consortium A
        assert in_a.is_final(genesis)
        assert not in_a.is_final(genesis_b) and not in_a.valid_signers(genesis_b)
        with pytest.raises(SignatureError, match="node0"):
            in_a.check(genesis_b)
        sig = in_a.signatures()[members[1].node_id]
        with pytest.raises(SignatureError, match="node1"):
            ledger_b.add_cosignature(head, members[1].node_id, sig)
        assert ledger_b.cosigned_head(head).cosignatures == []
        assert _cosigned(head, members[:3], genesis_b).is_final(genesis_b)
    # Equivocation evidence from A is no evidence in B.
    one = _cosigned(TreeHead(7, b"\x01" * 32, 1), members[:1], genesis)
    two = _cosigned(TreeHead(7, b"\x02" * 32, 2), members[:1], genesis)
    ev = find_equivocation(one, two, genesis)
    assert ev is not None
    ev.verify(genesis)
    with pytest.raises(SignatureError, match="node0"):
        ev.verify(genesis_b)
    assert find_equivocation(one, two, genesis_b) is None
