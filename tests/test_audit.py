"""`consortium audit`: a clean folder passes; any flipped byte in the ledger or store is caught."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.cli.app import app
from consortium.core.encoding import Domain
from consortium.core.errors import AuditError, IdentityError, LedgerError, SignatureError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity, tls_public_key_der
from consortium.ledger.entries import Entry, genesis_from_bytes, make_record, member_keys
from consortium.ledger.log import Ledger
from consortium.ledger.stored import check_chunk
from consortium.store.blockstore import BlockStore
from consortium.store.objects import put_bytes
from tests.records import round_body


def build_folder(root: Path, n_members: int = 3, n_records: int = 12) -> Path:
    """A node folder with a signed genesis, records referencing stored artifacts, cosigned heads."""
    ids = [NodeIdentity.generate(f"m{i}", f"127.0.0.1:{7200 + i}") for i in range(n_members)]
    genesis = Genesis.ceremony("audit-test", ids, [Purpose("research")], 1)
    genesis.save(root / "genesis.json")
    store = BlockStore(root / "store")
    rng = random.Random(7)
    with Ledger.create(root / "ledger.sqlite", genesis) as ledger:
        for k in range(n_records):
            size = rng.choice([100, 5000, 1_100_000])  # the large one spans two blocks
            cid = put_bytes(store, rng.randbytes(size))
            author = ids[k % n_members]
            ledger.append(
                make_record(author, "artifact", {"n": k, "model": cid}, 1000 + k, genesis)
            )
            if k % 3 == 2:  # a final head every few entries
                for ident in ids[: genesis.quorum]:
                    ledger.sign_head(ident, 2000 + k)
    return root


def test_clean_folder_passes(tmp_path: Path) -> None:
    report = audit(build_folder(tmp_path))
    assert report.entries == 13 and report.members == 3
    assert report.final_heads == 4 and report.latest_final_size == 13
    assert report.artifacts == 12 and report.blocks >= 12


def test_cli_audit_reports_ok_and_failure(tmp_path: Path) -> None:
    folder = build_folder(tmp_path)
    ok = CliRunner().invoke(app, ["audit", str(folder)])
    assert ok.exit_code == 0 and "audit OK" in ok.output
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("UPDATE entries SET data = data || x'00' WHERE idx = 5")
    bad = CliRunner().invoke(app, ["audit", str(folder)])
    assert bad.exit_code != 0 and "entry 5" in bad.output
    assert "Traceback" not in bad.output
    missing = CliRunner().invoke(app, ["audit", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "no ledger" in missing.output


Cell = tuple[str, str, list[str], tuple[object, ...]]

#: (table, column) of every value audit reads in the ledger, and where a change must be reported.
WHERE = {
    ("entries", "data"): lambda row: "entry {idx}".format(**row),
    ("entries", "leaf_hash"): lambda row: "entry {idx}".format(**row),
    ("cosignatures", "signature"): lambda row: "tree head of size {size}".format(**row),
    ("cosignatures", "root"): lambda row: "tree head of size {size}".format(**row),
    ("cosignatures", "time"): lambda row: "tree head of size {size}".format(**row),
    ("cosignatures", "node_id"): lambda row: "tree head of size {size}".format(**row),
    ("heads", "root"): lambda row: "tree head of size {size}".format(**row),
    ("heads", "time"): lambda row: "tree head of size {size}".format(**row),
    ("tree", "hash"): lambda row: "ledger tree",
}


def _cells(db: sqlite3.Connection) -> list[Cell]:
    """(table, column, all columns, row values) of every cell audit must protect."""
    cells: list[Cell] = []
    for table, column in WHERE:
        cur = db.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        cells.extend((table, column, names, tuple(row)) for row in cur)
    return cells


def _set(db: sqlite3.Connection, cell: Cell, value: object) -> None:
    table, column, names, row = cell
    where = " AND ".join(f"{n} = ?" for n in names)
    with db:
        cur = db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (value, *row))
    assert cur.rowcount == 1


def _flipped(value: object, rng: random.Random) -> object:
    if isinstance(value, int):
        return value ^ (1 << rng.randrange(40))
    if isinstance(value, str):  # a node id: flip a bit that keeps it ASCII
        pos = rng.randrange(len(value))
        return value[:pos] + chr(ord(value[pos]) ^ (1 << rng.randrange(6))) + value[pos + 1 :]
    assert isinstance(value, bytes)
    data = bytearray(value)
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def test_every_flip_is_caught_where_it_was_made(tmp_path: Path) -> None:
    """Each flip is refused, and the refusal names the block's CID, the entry or the tree head
    that was changed (not merely that something failed)."""
    folder = build_folder(tmp_path, n_records=9)
    audit(folder)
    rng = random.Random(2026)
    blocks = sorted(p for p in (folder / "store" / "blocks").rglob("*") if p.is_file())
    db_path = folder / "ledger.sqlite"
    seen: set[tuple[str, str]] = set()
    for trial in range(120):
        if trial % 3 == 0:
            path = rng.choice(blocks)
            os.chmod(path, 0o644)
            original = path.read_bytes()
            data = bytearray(original)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            with pytest.raises(AuditError, match=f"audit failed: store: .*{path.name}"):
                audit(folder)
            path.write_bytes(original)
            continue
        db = sqlite3.connect(db_path)
        cell = rng.choice(_cells(db))
        table, column, names, row = cell
        old = row[names.index(column)]
        new = _flipped(old, rng)
        try:
            _set(db, cell, new)
        except sqlite3.IntegrityError:  # the flip collided with another row's key: skip it
            db.close()
            continue
        db.close()
        place = WHERE[(table, column)](dict(zip(names, row, strict=True)))
        with pytest.raises(AuditError, match=f"audit failed: ledger.sqlite: .*{place}"):
            audit(folder)
        seen.add((table, column))
        db = sqlite3.connect(db_path)
        _set(db, (table, column, names, tuple(new if v is old else v for v in row)), old)
        db.close()
    assert seen == set(WHERE)  # every protected column was flipped at least once
    audit(folder)  # every flip was undone: the folder is clean again


def test_an_entry_stored_as_text_is_refused_by_index(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("UPDATE entries SET data = CAST(data AS TEXT) WHERE idx = 2")
    with pytest.raises(AuditError, match=r"ledger.sqlite: entry 2: a stored value has the wrong"):
        audit(folder)


def test_a_stored_leaf_hash_that_differs_from_its_entry_is_refused(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("UPDATE entries SET leaf_hash = zeroblob(32) WHERE idx = 2")
    with pytest.raises(AuditError, match=r"ledger.sqlite: entry 2: its stored leaf hash"):
        audit(folder)


def test_a_head_without_its_cosignatures_is_refused(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("UPDATE heads SET time = time + 1")  # the cosignatures name the old time
    with pytest.raises(AuditError, match=r"tree head of size 4 at time 2003: stored without a"):
        audit(folder)


def test_entries_without_a_final_head_are_refused(tmp_path: Path) -> None:
    """Removing cosignatures until the last head is below quorum leaves entries not final."""
    folder = build_folder(tmp_path, n_records=3)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        signers = db.execute("SELECT node_id FROM cosignatures WHERE size = 4").fetchall()
        db.execute("DELETE FROM cosignatures WHERE size = 4 AND node_id = ?", signers[0])
    with pytest.raises(AuditError, match=r"entry 1 and later are not covered by a final tree head"):
        audit(folder)


def test_a_changed_schema_is_refused(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("CREATE INDEX sneaky ON entries(leaf_hash)")
    with pytest.raises(AuditError, match=r"ledger.sqlite: the database schema was changed"):
        audit(folder)


def test_genesis_json_must_say_exactly_what_entry_0_says(tmp_path: Path) -> None:
    """Hex in another case loads to the same manifest, but the file is not what was signed."""
    folder = build_folder(tmp_path, n_records=3)
    path = folder / "genesis.json"
    signed = Genesis.load(path)
    data = json.loads(path.read_text())
    node, sig = next(iter(data["signatures"].items()))
    data["signatures"][node] = sig.upper()
    path.write_text(json.dumps(data))
    loaded = Genesis.load(path)
    assert loaded.digest() == signed.digest() and loaded.signatures == signed.signatures
    with pytest.raises(AuditError, match=r"genesis.json: differs from the manifest in ledger"):
        audit(folder)


def test_missing_artifact_names_the_cid(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    block = next(p for p in (folder / "store" / "blocks").rglob("*") if p.is_file())
    block.unlink()
    with pytest.raises(AuditError, match="CID"):
        audit(folder)


def test_replaced_genesis_is_caught(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    other = NodeIdentity.generate("x")
    g = Genesis.ceremony("other", [other], [Purpose("p")], 1)
    g.save(folder / "genesis.json")
    with pytest.raises(AuditError, match="genesis"):
        audit(folder)


def test_a_consent_commitment_carrying_an_identifier_fails_audit(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("m0")
    genesis = Genesis.ceremony("t", [ident], [Purpose("research")], 1)
    genesis.save(tmp_path / "genesis.json")
    leak = {"root": bytes(32), "count": 1, "purpose": "research", "subject": "alice"}
    with Ledger.create(tmp_path / "ledger.sqlite", genesis) as ledger:
        body = round_body(ident.node_id, 1, leak)
        store = BlockStore(tmp_path / "store")
        put_bytes(store, b"model 1")  # the record's model: the audit reaches the record itself
        ledger.append(make_record(ident, "round", body, 5, genesis))
        ledger.sign_head(ident, 6)
    with pytest.raises(AuditError, match="entry 1: malformed round record: consent commitment"):
        audit(tmp_path)


# -- consortium binding ----------------------------------------------------------------------------


def _twin_consortia() -> tuple[list[NodeIdentity], Genesis, Genesis]:
    """Consortia A and B with the very same members (keys); only the manifests differ."""
    ids = [NodeIdentity.generate(f"m{i}", seed=b"audit-bind%d" % i) for i in range(3)]
    a = Genesis.ceremony("twin", ids, [Purpose("research")], 1)
    b = Genesis.ceremony("twin", ids, [Purpose("research"), Purpose("x")], 1)
    assert a.digest() != b.digest()
    return ids, a, b


def _folder_of_b(root: Path, ids: list[NodeIdentity], a: Genesis, b: Genesis, spliced: int) -> None:
    """B's folder whose record at `spliced` was signed for A (stored unchecked); heads for B."""
    b.save(root / "genesis.json")
    with Ledger.create(root / "ledger.sqlite", b) as ledger:
        for k in range(1, 6):
            g = a if k == spliced else b
            ledger.append(make_record(ids[k % 3], "note", {"round": k}, k, g), verify=False)
        for ident in ids[: b.quorum]:
            ledger.sign_head(ident, 10)


def test_an_entry_signed_for_another_consortium_fails_audit(tmp_path: Path) -> None:
    ids, a, b = _twin_consortia()
    (tmp_path / "clean").mkdir()
    _folder_of_b(tmp_path / "clean", ids, a, b, spliced=0)
    assert audit(tmp_path / "clean", workers=1).entries == 6
    (tmp_path / "spliced").mkdir()
    _folder_of_b(tmp_path / "spliced", ids, a, b, spliced=3)
    with pytest.raises(
        AuditError,
        match=rf"entry 3: invalid signature on note entry from member m0 \({ids[0].node_id}\)",
    ):
        audit(tmp_path / "spliced", workers=1)


def test_a_head_cosigned_for_another_consortium_fails_audit(tmp_path: Path) -> None:
    ids, a, b = _twin_consortia()
    _folder_of_b(tmp_path, ids, a, b, spliced=0)
    audit(tmp_path, workers=1)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        head = ledger.head(11)
        with ledger._transaction():  # stored unchecked, as a tampered folder would hold it
            ledger._store_cosignatures(head, [head.sign(ids[1], a)])
    with pytest.raises(AuditError, match="tree head of size 6: invalid cosignature from m1"):
        audit(tmp_path, workers=1)


def test_fast_and_slow_entry_checks_agree(tmp_path: Path) -> None:
    """The audit's fast path (bytes sliced from storage) and `Entry.verify` (re-encoded) accept
    and refuse the very same entries, in either consortium."""
    ids, a, b = _twin_consortia()
    outsider = NodeIdentity.generate("outsider", seed=b"audit-bind-out")
    e = make_record(ids[0], "round", {"round": 1, "loss": 0.5}, 7, b)
    in_a = make_record(ids[0], "round", {"round": 1, "loss": 0.5}, 7, a)
    second_b = {ids[1].node_id: ids[1].sign(Domain.RECORD, e.signed_body(), b.digest())}
    flipped = bytearray(e.signatures[e.author])
    flipped[9] ^= 4
    cases = {
        "valid in B": e,
        "signed for A": in_a,
        "body changed": Entry(e.kind, e.author, {"round": 2, "loss": 0.5}, e.signatures, e.time),
        "signature flipped": Entry(e.kind, e.author, e.body, {e.author: bytes(flipped)}, e.time),
        "outsider": make_record(outsider, "round", e.body, 7, b),
        "cosigned in B": Entry(e.kind, e.author, e.body, {**e.signatures, **second_b}, e.time),
        "cosigner for A": Entry(e.kind, e.author, e.body, {**in_a.signatures, **second_b}, e.time),
    }
    keys = member_keys(b)
    results: dict[str, tuple[bool, bool]] = {}
    for name, entry in cases.items():
        for g in (a, b):
            fast = check_chunk([(1, entry.data)], keys, g.digest()).error is None
            try:
                Entry.from_bytes(entry.data).verify(g)
                slow = True
            except SignatureError:
                slow = False
            assert fast == slow, (name, g.purposes)
        results[name] = (
            check_chunk([(1, entry.data)], keys, a.digest()).error is None,
            check_chunk([(1, entry.data)], keys, b.digest()).error is None,
        )
    assert results == {
        "valid in B": (False, True),
        "signed for A": (True, False),
        "body changed": (False, False),
        "signature flipped": (False, False),
        "outsider": (False, False),
        "cosigned in B": (False, True),
        "cosigner for A": (False, False),
    }


# -- entry 0 -----------------------------------------------------------------------------------


#: The DER encoding of the P-256 curve's OID (1.2.840.10045.3.1.7) in a certificate's key.
P256 = bytes.fromhex("06082a8648ce3d030107")


def _damaged_key_cert(pem: str, part: str = "point") -> str:
    """The certificate with one bit of its public key flipped: it still parses, and only reading
    the key fails, since cryptography parses a certificate's key lazily: a point off the curve
    is "Invalid key" (ValueError), another curve is UnsupportedAlgorithm."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    point = cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    der = bytearray(cert.public_bytes(Encoding.DER))
    if part == "point":
        der[der.index(point) + 9] ^= 0x10
    else:
        der[der.index(P256) + 9] ^= 0x01  # the curve 1.2.840.10045.3.1.6
    return ssl.DER_cert_to_PEM_cert(bytes(der))


@pytest.mark.parametrize("part", ["point", "curve"])
def test_a_certificate_with_a_damaged_key_is_an_identity_error(part: str) -> None:
    pem = NodeIdentity.generate("m").public().tls_cert_pem
    damaged = _damaged_key_cert(pem, part)
    x509.load_pem_x509_certificate(damaged.encode())  # the certificate itself still loads
    with pytest.raises(IdentityError, match="malformed TLS certificate"):
        tls_public_key_der(damaged)


def test_a_genesis_entry_with_a_damaged_key_fails_audit_naming_entry_0(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    with Ledger.open(folder / "ledger.sqlite") as ledger:
        entry = ledger.entry(0)
    member = dict(entry.body["members"][0])
    member["tls_cert"] = _damaged_key_cert(member["tls_cert"])
    body = {**entry.body, "members": [member, *entry.body["members"][1:]]}
    damaged = Entry(entry.kind, entry.author, body, entry.signatures, entry.time)
    with sqlite3.connect(folder / "ledger.sqlite") as db:
        db.execute("UPDATE entries SET data = ? WHERE idx = 0", (damaged.data,))
    with pytest.raises(AuditError, match=r"ledger.sqlite: .*entry 0 .*malformed TLS certificate"):
        audit(folder)


def test_every_flip_of_entry_0_is_a_typed_error_naming_it(tmp_path: Path) -> None:
    """Entry 0 is parsed before anything can be checked: whatever its bytes, the refusal is a
    LedgerError naming entry 0 (never ValueError, TypeError, UnsupportedAlgorithm...)."""
    folder = build_folder(tmp_path, n_records=1)
    with Ledger.open(folder / "ledger.sqlite") as ledger:
        data = ledger.entry_bytes(0)
    rng = random.Random(13)
    for _ in range(400):
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        with pytest.raises(LedgerError, match=r"^entry 0 "):
            genesis_from_bytes(bytes(flipped))
