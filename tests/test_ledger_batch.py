"""Batched verification (`ledger.parallel`, `EntryChecks`): appends, replica sync and audit,
on the process pool and inline, refuse exactly what checking one entry at a time with the
signed body encoded again (the verifier before batching) refuses, and name the same entry; the
signed bytes sliced from the stored bytes are the encoded signed body; entries that are not
canonical dag-cbor are refused everywhere, however validly signed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import cbor2
import pytest
from multiformats import CID, multihash

from consortium.audit import audit
from consortium.audit import auditor as auditor_module
from consortium.core.encoding import Domain, domain_prefix, encode
from consortium.core.errors import AuditError, LedgerError, SignatureError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import Entry, Ledger, make_record, parallel, sync
from consortium.ledger.entries import (
    GENESIS_KIND,
    check_signature,
    first_failure,
    genesis_entry,
    member_keys,
)


@pytest.fixture(scope="module")
def members() -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"node{i}", seed=b"batch%d" % i) for i in range(4)]


@pytest.fixture(scope="module")
def genesis(members: list[NodeIdentity]) -> Genesis:
    return Genesis.ceremony("batch", members, [Purpose("research")], 5)


@pytest.fixture(scope="module")
def other(members: list[NodeIdentity]) -> Genesis:
    """The same members, another manifest: a signature for it is no signature here."""
    return Genesis.ceremony("batch-other", members, [Purpose("research")], 5)


@pytest.fixture
def pool_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every batch, however small, to the pool."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 1)


def _cid(data: bytes) -> CID:
    return CID("base32", 1, "raw", multihash.digest(data, "sha2-256"))


def _records(
    members: list[NodeIdentity], genesis: Genesis, n: int, start: int = 0, cids: bool = True
) -> list[Entry]:
    """Records i = start … start + n - 1, authored by members[i % 4]."""
    return [
        make_record(
            members[i % 4],
            "record",
            {"i": i, **({"at": _cid(b"%d" % i)} if cids else {})},
            i,
            genesis,
        )
        for i in range(start, start + n)
    ]


def _with_flipped_signature(e: Entry) -> Entry:
    return Entry(e.kind, e.author, e.body, {e.author: _flip(e.signatures[e.author])}, e.time)


def _category(message: str | None) -> str:
    if message is None:
        return "accepted"
    for words in ("no signature", "not signed by its author", "not a member", "genesis"):
        if words in message:
            return words
    assert message.startswith("invalid signature"), message
    return "invalid signature"


def _flip(sig: bytes, bit: int = 3) -> bytes:
    out = bytearray(sig)
    out[bit % 64] ^= 1 << (bit % 8)
    return bytes(out)


def oracle(entries: list[Entry], genesis: Genesis) -> tuple[int, str] | None:
    """One entry after another, each signed body encoded again: the verifier before batching."""
    keys = member_keys(genesis)
    for pos, e in enumerate(entries):
        if e.kind == GENESIS_KIND:
            return pos, "a genesis entry can only be entry 0"
        if not e.signatures:
            return pos, f"{e.kind} entry carries no signature"
        if e.author not in e.signatures:
            return pos, f"{e.kind} entry is not signed by its author {e.author}"
        for node_id, sig in e.signatures.items():
            if node_id not in keys:
                return pos, f"{e.kind} entry signed by {node_id}, which is not a member"
            name, key = keys[node_id]
            if not check_signature(key, Domain.RECORD, e.signed_body(), sig, genesis.digest()):
                return pos, f"invalid signature on {e.kind} entry from member {name} ({node_id})"
    return None


# -- the signed bytes ------------------------------------------------------------------------------


def test_signed_bytes_are_the_encoded_signed_body(
    members: list[NodeIdentity], genesis: Genesis
) -> None:
    a, b = members[0], members[1]
    made = make_record(a, "round", {"m": _cid(b"x"), "l": [1.5, None, True], "z": -3}, 9, genesis)
    assert made.data == encode(made.to_dict())
    cosig = b.sign(Domain.RECORD, made.signed_body(), genesis.digest())
    both = Entry(made.kind, made.author, made.body, {**made.signatures, b.node_id: cosig}, 9)
    odd = Entry("k", "someone", {}, {"x": b"1", "ab": b"22", "b": b""}, -1)  # keys reordered
    # 30 signatures (a two-byte map head), values up to 377 bytes (three-byte heads)
    many = Entry("k", "a0", {"b": b"\x00" * 300}, {f"a{i}": bytes(13 * i) for i in range(30)}, 2)
    decoded = [Entry.from_bytes(e.data) for e in (made, both, odd, many)]
    assert all("signed_bytes" in e.__dict__ for e in decoded)  # sliced while decoding
    for e in (made, both, odd, many, *decoded):
        assert e.signed_bytes == encode(e.signed_body())
        assert e.data == encode(e.to_dict())


# -- appends ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tampered_entry_in_a_batch_is_refused_by_name_and_nothing_is_written(
    tmp_path: Path,
    members: list[NodeIdentity],
    genesis: Genesis,
    pool_always: None,
    workers: int,
) -> None:
    with Ledger.create(tmp_path / "l.db", genesis) as led:
        led.append_many(_records(members, genesis, 5), workers=workers)
        size, root = led.size, led.root()
        batch = _records(members, genesis, 40, start=100)
        bad = batch[23]
        batch[23] = _with_flipped_signature(bad)
        who = members[123 % 4]
        with pytest.raises(
            SignatureError,
            match=rf"^entry {size + 23}: invalid signature on record entry from member "
            rf"{who.name} \({who.node_id}\)$",
        ):
            led.append_many(batch, workers=workers, expect_size=size)
        assert (led.size, led.root()) == (size, root)
        with Ledger.open(led.path) as again:  # nothing reached the file either
            assert (again.size, again.root()) == (size, root)
        batch[23] = bad
        assert led.append_many(batch, workers=workers, expect_size=size) == size
        assert led.fsck() == led.root() and led.size == size + 40


def _damaged(
    rng: random.Random, e: Entry, members: list[NodeIdentity], genesis: Genesis, other: Genesis
) -> Entry:
    outsider = NodeIdentity.generate("outsider", seed=b"batch-outsider")
    cosigner = members[(members.index(next(m for m in members if m.node_id == e.author)) + 1) % 4]
    how = rng.choice(
        ["flip", "body", "outsider", "no author", "none", "genesis", "cosigned", "cosigned other"]
    )
    sigs = dict(e.signatures)
    if how == "flip":
        sigs[e.author] = _flip(sigs[e.author], rng.randrange(512))
    elif how == "body":
        return Entry(e.kind, e.author, {**e.body, "i": -1}, sigs, e.time)
    elif how == "outsider":
        sigs[outsider.node_id] = outsider.sign(Domain.RECORD, e.signed_body(), genesis.digest())
    elif how == "no author":
        sigs = {cosigner.node_id: cosigner.sign(Domain.RECORD, e.signed_body(), genesis.digest())}
    elif how == "none":
        sigs = {}
    elif how == "genesis":
        return genesis_entry(genesis)
    else:
        g = genesis if how == "cosigned" else other  # a second signature, valid or for elsewhere
        sigs[cosigner.node_id] = cosigner.sign(Domain.RECORD, e.signed_body(), g.digest())
    return Entry(e.kind, e.author, e.body, sigs, e.time)


def test_pool_and_inline_refuse_exactly_what_one_entry_at_a_time_refuses(
    members: list[NodeIdentity], genesis: Genesis, other: Genesis, pool_always: None
) -> None:
    base = _records(members, genesis, 30)
    rng = random.Random(15)
    outcomes = set()
    for _ in range(40):
        batch = list(base)
        for pos in rng.sample(range(len(batch)), rng.choice([0, 1, 1, 2, 3])):
            batch[pos] = _damaged(rng, batch[pos], members, genesis, other)
        want = oracle(batch, genesis)
        for workers in (1, 2):
            got = first_failure(batch, genesis, workers)
            assert (got and (got[0], str(got[1]))) == want, (workers, want, got)
        outcomes.add(_category(want[1] if want else None))
    assert len(outcomes) == 6  # every kind of refusal, and clean batches


# -- bytes that are not canonical ------------------------------------------------------------------


def _signed_as_is(member: NodeIdentity, genesis: Genesis, signed: bytes) -> bytes:
    """Entry bytes whose signed part is exactly `signed`, however it is encoded, validly signed
    by `member` (the stored form: 0xa5, the same pairs, then the signatures)."""
    payload = domain_prefix(Domain.RECORD, genesis.digest()) + signed
    sig = member._signing_key.sign(payload)
    return b"\xa5" + signed[1:] + cbor2.dumps("signatures") + cbor2.dumps({member.node_id: sig})


def _non_canonical(member: NodeIdentity, genesis: Genesis) -> dict[str, bytes]:
    e = make_record(member, "record", {"a": 1, "bb": 2}, 7, genesis)
    canonical = e.signed_bytes
    assert _signed_as_is(member, genesis, canonical) == e.data
    assert canonical.count(b"\x61a\x01\x62bb\x02") == 1
    int_long = canonical.replace(b"\x61a\x01", b"\x61a\x18\x01")  # 1 in two bytes
    keys_swapped = canonical.replace(b"\x61a\x01\x62bb\x02", b"\x62bb\x02\x61a\x01")
    float_short = canonical.replace(b"\x61a\x01", b"\x61a\xf9\x3c\x00")  # 1.0 in 16 bits
    assert len({canonical, int_long, keys_swapped, float_short}) == 4
    return {
        name: _signed_as_is(member, genesis, signed)
        for name, signed in [
            ("int_long", int_long),
            ("keys_swapped", keys_swapped),
            ("float_short", float_short),
        ]
    }


def test_a_validly_signed_entry_that_is_not_canonical_is_refused_everywhere(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis, pool_always: None
) -> None:
    """Before the audit decoded entries with the shared decoder, its fast path checked the
    signatures over the stored bytes but not their canonical form, and passed these."""
    for name, data in _non_canonical(members[0], genesis).items():
        with pytest.raises(LedgerError, match="not canonical"):
            Entry.from_bytes(data)
        folder = tmp_path / name
        folder.mkdir()
        with Ledger.create(folder / "ledger.sqlite", genesis) as led:
            led.append_many(_records(members, genesis, 3))
            with led._transaction():  # stored unchecked, as a member's own node could
                led._insert([data])
            led.append_many(_records(members, genesis, 3, start=10))
            for m in members[: genesis.quorum]:
                led.sign_head(m, 100)
            replica = Ledger.create(tmp_path / f"{name}-replica.db", genesis)
            with pytest.raises(LedgerError, match="not canonical"):
                sync(replica, led)
            assert replica.size == 1
            replica.close()
        for workers in (1, 2):
            with pytest.raises(AuditError, match=r"ledger.sqlite: entry 4: .*not canonical"):
                audit(folder, workers=workers)


# -- replica sync and audit on the pool ------------------------------------------------------------


def _ledger_with_a_bad_entry(
    path: Path, members: list[NodeIdentity], genesis: Genesis, n: int, bad: int | None
) -> None:
    """n records (no CIDs), entry `bad`'s signature flipped and stored unchecked; final head."""
    with Ledger.create(path, genesis) as led:
        entries = _records(members, genesis, n, cids=False)
        if bad is not None:
            entries[bad - 1] = _with_flipped_signature(entries[bad - 1])
        led.append_many(entries, verify=False)
        for m in members[: genesis.quorum]:
            led.sign_head(m, 50)


def test_replica_sync_refuses_a_tampered_entry_by_name(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis, pool_always: None
) -> None:
    _ledger_with_a_bad_entry(tmp_path / "src.db", members, genesis, 30, bad=17)
    with Ledger.open(tmp_path / "src.db") as source, Ledger.create(tmp_path / "r.db", genesis) as r:
        who = members[16 % 4]
        with pytest.raises(
            SignatureError, match=rf"peer's entry 17: invalid signature .* member {who.name} "
        ):
            sync(r, source)
        assert r.size == 1


def test_audit_on_the_pool_and_inline_agree(
    tmp_path: Path,
    members: list[NodeIdentity],
    genesis: Genesis,
    pool_always: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auditor_module, "CHUNK", 4)  # 30 entries: 8 chunks for the workers
    clean, bad = tmp_path / "clean", tmp_path / "bad"
    clean.mkdir()
    bad.mkdir()
    _ledger_with_a_bad_entry(clean / "ledger.sqlite", members, genesis, 30, bad=None)
    reports = [audit(clean, workers=w) for w in (1, 2)]
    assert [(r.entries, r.root, r.kinds, r.final_heads) for r in reports] == [
        (31, reports[0].root, {"genesis": 1, "record": 30}, 1)
    ] * 2
    _ledger_with_a_bad_entry(bad / "ledger.sqlite", members, genesis, 30, bad=22)
    messages = []
    for workers in (1, 2):
        with pytest.raises(AuditError, match="entry 22: invalid signature") as caught:
            audit(bad, workers=workers)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


# -- the pool itself -------------------------------------------------------------------------------


class _BrokenExecutor:
    """Stands for a pool whose workers died: every future (or every submit) fails."""

    def __init__(self, on_submit: bool) -> None:
        self.on_submit = on_submit
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        self.submitted += 1
        if self.on_submit:
            raise BrokenProcessPool("a worker died")
        future: Future[Any] = Future()
        future.set_exception(BrokenProcessPool("a worker died"))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


@pytest.mark.parametrize("on_submit", [False, True])
def test_a_broken_pool_is_dropped_and_every_check_still_runs(
    members: list[NodeIdentity], genesis: Genesis, monkeypatch: pytest.MonkeyPatch, on_submit: bool
) -> None:
    broken = _BrokenExecutor(on_submit)
    monkeypatch.setattr(parallel, "MIN_PARALLEL", 1)
    monkeypatch.setattr(parallel, "pool", lambda workers: broken)
    monkeypatch.setattr(parallel, "_discard", lambda workers, executor: None)
    entries = _records(members, genesis, 12)
    prefix = domain_prefix(Domain.RECORD, genesis.digest())
    keys = member_keys(genesis)
    checks = [(keys[e.author][1], e.signatures[e.author], e.signed_bytes) for e in entries]
    assert parallel.SignatureBatch(prefix, checks, workers=2).first_invalid() is None
    checks[9] = (checks[9][0], _flip(checks[9][1]), checks[9][2])
    assert parallel.SignatureBatch(prefix, checks, workers=2).first_invalid() == 9
    assert broken.submitted >= 1  # the pool was tried


def test_the_pool_path_runs_in_other_processes(pool_always: None) -> None:
    got = list(parallel.Pending(os.getpid, [(), (), (), ()], workers=2).results())
    assert os.getpid() not in got and len(got) == 4


def test_a_forked_child_starts_its_own_pool(
    members: list[NodeIdentity], genesis: Genesis, pool_always: None
) -> None:
    """A process forked after its parent made a pool (a simulated node) must not submit to the
    parent's workers: it would wait forever for answers that go to the parent."""
    entries = _records(members, genesis, 8)
    assert first_failure(entries, genesis, workers=2) is None  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its own pool answers, both ways
        try:
            ok = first_failure(entries, genesis, workers=2) is None
            bad = [*entries[:5], _with_flipped_signature(entries[5]), *entries[6:]]
            found = first_failure(bad, genesis, workers=2)
            parallel.shutdown()  # os._exit skips the exit handlers that would stop its workers
            os._exit(0 if ok and found is not None and found[0] == 5 else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's checks never came back")


def test_fsck_names_the_first_tree_node_that_differs(
    tmp_path: Path, members: list[NodeIdentity], genesis: Genesis
) -> None:
    path = tmp_path / "l.db"
    with Ledger.create(path, genesis) as led:
        led.append_many(_records(members, genesis, 12))
    cases = {
        "DELETE FROM tree WHERE level = 1 AND idx = 2": r"\(1, 2\)",
        "UPDATE tree SET hash = zeroblob(32) WHERE level = 2 AND idx = 1": r"\(2, 1\)",
        "INSERT INTO tree VALUES (0, 13, zeroblob(32))": r"\(0, 13\)",
        "INSERT INTO tree VALUES (3, 1, zeroblob(32))": r"\(3, 1\)",
    }
    for statement, node in cases.items():
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        db = sqlite3.connect(copy)
        with db:
            db.execute(statement)
        db.close()
        with Ledger.open(copy) as led, pytest.raises(LedgerError, match=f"at node {node}"):
            led.fsck()
        copy.unlink()
