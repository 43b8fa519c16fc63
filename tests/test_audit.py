"""`consortium audit`: a clean folder passes; any flipped byte in the ledger or store is caught."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.cli.app import app
from consortium.core.errors import AuditError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import make_record
from consortium.ledger.log import Ledger
from consortium.store.blockstore import BlockStore
from consortium.store.objects import put_bytes


def build_folder(root: Path, n_members: int = 3, n_records: int = 12) -> Path:
    """A node folder with a signed genesis, records referencing stored artifacts, cosigned heads."""
    ids = [NodeIdentity.generate(f"m{i}", f"127.0.0.1:{7200 + i}") for i in range(n_members)]
    genesis = Genesis.create("audit-test", [i.public() for i in ids], [Purpose("research")], 1)
    for i in ids:
        genesis.sign(i)
    genesis.save(root / "genesis.json")
    store = BlockStore(root / "store")
    rng = random.Random(7)
    with Ledger.create(root / "ledger.sqlite", genesis) as ledger:
        for k in range(n_records):
            size = rng.choice([100, 5000, 1_100_000])  # the large one spans two blocks
            cid = put_bytes(store, rng.randbytes(size))
            author = ids[k % n_members]
            ledger.append(
                make_record(author, "round", {"round": k, "model": cid}, 1000 + k, genesis)
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


def _blob_cells(db: sqlite3.Connection) -> list[Cell]:
    """(table, BLOB column, all columns, row values) of every cell audit must protect."""
    cells: list[Cell] = []
    for table, column in [
        ("entries", "data"),
        ("cosignatures", "signature"),
        ("cosignatures", "root"),
        ("heads", "root"),
        ("tree", "hash"),
    ]:
        cur = db.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cur.description]
        cells.extend((table, column, names, tuple(row)) for row in cur)
    return cells


def _set(db: sqlite3.Connection, cell: Cell, value: bytes) -> None:
    table, column, names, row = cell
    where = " AND ".join(f"{n} = ?" for n in names)
    with db:
        cur = db.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (value, *row))
    assert cur.rowcount == 1


def test_every_flipped_byte_is_caught(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=9)
    audit(folder)
    rng = random.Random(2026)
    blocks = sorted(p for p in (folder / "store" / "blocks").rglob("*") if p.is_file())
    db_path = folder / "ledger.sqlite"
    flips = 0
    for trial in range(220):
        if trial % 2 == 0:
            path = rng.choice(blocks)
            os.chmod(path, 0o644)
            data = bytearray(path.read_bytes())
            pos = rng.randrange(len(data))
            original = bytes(data)
            data[pos] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
            with pytest.raises(AuditError, match="CID"):
                audit(folder)
            path.write_bytes(original)
        else:
            db = sqlite3.connect(db_path)
            cell = rng.choice(_blob_cells(db))
            blob = cell[3][cell[2].index(cell[1])]
            assert isinstance(blob, bytes)
            data = bytearray(blob)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            _set(db, cell, bytes(data))
            flipped = (*cell[:3], tuple(bytes(data) if v is blob else v for v in cell[3]))
            db.close()
            with pytest.raises(AuditError):
                audit(folder)
            db = sqlite3.connect(db_path)
            _set(db, flipped, blob)
            db.close()
        flips += 1
    assert flips >= 200
    audit(folder)  # every flip was undone: the folder is clean again


def test_missing_artifact_names_the_cid(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    block = next(p for p in (folder / "store" / "blocks").rglob("*") if p.is_file())
    block.unlink()
    with pytest.raises(AuditError, match="CID"):
        audit(folder)


def test_replaced_genesis_is_caught(tmp_path: Path) -> None:
    folder = build_folder(tmp_path, n_records=3)
    other = NodeIdentity.generate("x")
    g = Genesis.create("other", [other.public()], [Purpose("p")], 1)
    g.sign(other)
    g.save(folder / "genesis.json")
    with pytest.raises(AuditError, match="genesis"):
        audit(folder)


def test_a_consent_commitment_carrying_an_identifier_fails_audit(tmp_path: Path) -> None:
    ident = NodeIdentity.generate("m0")
    genesis = Genesis.create("t", [ident.public()], [Purpose("research")], 1)
    genesis.sign(ident)
    genesis.save(tmp_path / "genesis.json")
    leak = {"root": bytes(32), "count": 1, "purpose": "research", "subject": "alice"}
    with Ledger.create(tmp_path / "ledger.sqlite", genesis) as ledger:
        ledger.append(make_record(ident, "round", {"consent": {ident.node_id: leak}}, 5, genesis))
        ledger.sign_head(ident, 6)
    with pytest.raises(AuditError, match="entry 1: consent commitment"):
        audit(tmp_path)
