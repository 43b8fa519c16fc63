"""A real run folder (consent, SecAgg+, embedded anchoring) under tampering: a seeded sample of
`consortium bench tamper`, and the consent registry audited against the ledger."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType

import pytest

from consortium.audit import audit
from consortium.cli.bench import load_script
from consortium.core.errors import AuditError
from tests.test_consent_verify import _edit, _rechain, _sql


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("tamper")


@pytest.fixture(scope="module")
def run_folder(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder: Path = bench.build_run(tmp_path_factory.mktemp("tamper") / "run", rounds=2, seed=0)
    return folder


@pytest.fixture
def folder(run_folder: Path, tmp_path: Path) -> Path:
    """A copy of node0's folder to tamper with."""
    copy = tmp_path / "node0"
    shutil.copytree(run_folder, copy)
    audit(copy)
    return copy


def test_a_sample_of_flips_is_each_caught_where_it_was_made(
    bench: ModuleType, folder: Path
) -> None:
    """Every mutation is refused by an AuditError naming the file (and the entry, tree head,
    consent event or round, or block CID it changed), or provably changed nothing audit reads.
    The folder's random salts and masks vary from run to run; the per-flip rule holds for all."""
    trials = bench.run_trials(folder, 60, seed=7)
    assert len(trials) == 60
    for t in trials:
        m = t.mutation
        if t.outcome == "detected":
            assert t.message.startswith("AuditError: audit failed: ")
            assert all(s in t.message for s in m.expect), (m, t.message)
        else:
            assert t.outcome in ("unchanged", "not read", "limit"), (m, t.outcome, t.message)
    assert {"ledger.sqlite", "consent.sqlite"} <= {t.mutation.file for t in trials}
    audit(folder)  # every mutation was undone


def test_a_deleted_consent_event_fails_audit_naming_it(folder: Path) -> None:
    _edit(folder / "consent.sqlite", _sql("DELETE FROM events WHERE seq = 7"))
    with pytest.raises(AuditError, match=r"audit failed: consent.sqlite: event 7 is missing"):
        audit(folder)


def test_a_consent_history_rewritten_consistently_fails_audit_against_the_ledger(
    folder: Path,
) -> None:
    """Whoever holds the folder holds the salts and can rebuild the whole registry around a
    changed event; the heads its node committed in the round records still tell."""
    path = folder / "consent.sqlite"
    withdraw = _sql(
        "UPDATE events SET at = 1.0 WHERE seq = (SELECT min(seq) FROM events "
        "WHERE kind = 'withdraw')",
        "UPDATE consent SET withdrawn = 1.0 WHERE withdrawn IS NOT NULL",
    )
    _edit(path, lambda db: (withdraw(db), _rechain(db, heads=True)))
    refusal = r"consent.sqlite: round at ledger entry 2: the stored commitment differs"
    with pytest.raises(AuditError, match=refusal):
        audit(folder)


def test_node_pub_must_be_the_member_listed_in_genesis(folder: Path) -> None:
    path = folder / "node.pub"
    data = json.loads(path.read_text())
    data["address"] = "127.0.0.1:1"  # not covered by the node's own bindings
    path.write_text(json.dumps(data))
    with pytest.raises(AuditError, match=r"node.pub: differs from member node0 in the genesis"):
        audit(folder)


def test_a_damaged_index_fails_audit_as_damage(folder: Path) -> None:
    """SQLite's own integrity check runs before any row is trusted: here the index that the
    registry's format lookup goes through no longer matches its table."""
    path = folder / "consent.sqlite"
    with sqlite3.connect(path) as db:
        (size,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_meta_1'"
        ).fetchone()
    data = bytearray(path.read_bytes())
    page = slice((root - 1) * size, root * size)
    data[page.start + bytes(data[page]).index(b"format") + 3] ^= 0x02  # "format" -> "forcat"
    path.write_bytes(bytes(data))
    with pytest.raises(AuditError, match=r"consent.sqlite: the database is damaged: .*index"):
        audit(folder)


def test_a_value_breaking_its_check_constraint_is_named_by_row(folder: Path) -> None:
    _edit(folder / "consent.sqlite", _sql("UPDATE events SET kind = 'grunt' WHERE seq = 3"))
    with pytest.raises(AuditError, match=r"consent.sqlite: event 3: malformed"):
        audit(folder)


def test_a_registry_without_node_pub_cannot_be_audited(folder: Path) -> None:
    (folder / "node.pub").unlink()
    with pytest.raises(AuditError, match=r"consent.sqlite: no node.pub says which member"):
        audit(folder)


def test_audit_changes_nothing_in_the_folder(folder: Path) -> None:
    """Not even the SQLite files' headers, nor -wal/-shm files left behind: the ledger is
    switched to the rollback journal first, which a writer's open would switch back to WAL."""
    with (folder / "ledger.sqlite").open("r+b") as fh:
        fh.seek(18)
        fh.write(b"\x01\x01")  # file format: legacy (rollback journal)

    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot()
    audit(folder)
    assert snapshot() == before


def test_a_schema_that_is_not_utf8_fails_audit_naming_the_file(folder: Path) -> None:
    """SQLite quotes the damaged schema in its error, which Python cannot even decode."""
    path = folder / "consent.sqlite"
    data = bytearray(path.read_bytes())
    at = data.index(b"PRIMARY KEY (purpose, record_id)) WITHOUT ROWID") + len(
        "PRIMARY KEY (purpose, "
    )
    data[at] ^= 0x80  # "record_id" -> "\xf2ecord_id"
    path.write_bytes(bytes(data))
    with pytest.raises(AuditError, match=r"consent.sqlite: not a readable database: .*not UTF-8"):
        audit(folder)
