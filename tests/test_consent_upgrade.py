"""Registries of format 2 (integer record ids) keep working: read as they are, upgraded on write.

`tests/data/consent-v2.sqlite` was written by the code of format 2 (`tests/data/make_consent_v2.py`:
grants, three committed rounds, a withdrawal, an expiry change, an erasure and a later grant),
with the commitments it made (`consent-v2.committed.json`) and a subject's receipt
(`consent-v2.receipt-s1.json`, receipt format 1).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from consortium.audit.database import check_database
from consortium.consent import (
    ConsentError,
    ConsentRegistry,
    Receipt,
    RoundCommitment,
    begin_round,
    check_receipt,
    receipt_from_registry,
    verify_registry,
)
from consortium.consent.registry import (
    FORMAT,
    FORMAT_V2,
    SCHEMA,
    SCHEMA_V2,
    _upgrade,
    registry_schema,
    stored_format,
)

DATA = Path(__file__).parent / "data"
P = "research"


def committed() -> dict[int, RoundCommitment]:
    raw = json.loads((DATA / "consent-v2.committed.json").read_text())
    return {
        int(slot): RoundCommitment(
            bytes.fromhex(c["root"]), c["count"], c["purpose"], bytes.fromhex(c["head"])
        )
        for slot, c in raw.items()
    }


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    path = tmp_path / "consent.sqlite"
    shutil.copy(DATA / "consent-v2.sqlite", path)
    return path


def _format(path: Path) -> str | None:
    conn = sqlite3.connect(path)
    try:
        return stored_format(conn)
    finally:
        conn.close()


def test_a_reader_audits_a_format_2_registry_without_writing_it(v2: Path) -> None:
    before = v2.read_bytes()
    assert _format(v2) == FORMAT_V2
    check_database(v2, registry_schema(v2))  # what the auditor checks: format 2's schema
    with pytest.raises(Exception, match="schema was changed"):
        check_database(v2, SCHEMA)
    with ConsentRegistry(v2, readonly=True) as reg:
        verify_registry(reg, committed())
        assert reg.records_of("big") == ["1000", "12"]  # text, sorted as text
    assert v2.read_bytes() == before
    assert sorted(p.name for p in v2.parent.iterdir()) == ["consent.sqlite"]


def test_a_writer_upgrades_it_in_place_keeping_every_commitment(v2: Path) -> None:
    with ConsentRegistry(v2) as reg:
        assert _format(v2) == FORMAT
        verify_registry(reg, committed())  # chain, blinds, leaves and heads as they were
        assert reg.eligible(P, 55.0).tolist() == [
            *("0", "1", "10", "1000", "11", "12", "4", "5", "8", "9")  # sorted as text
        ]
        # Subjects of the old registry get receipts that check against the old commitments.
        verdicts = check_receipt(receipt_from_registry(reg, "s0", "node-x"), committed())
        assert [v.status for v in verdicts] == ["used"] * 6
        # New records with text ids join the same registry.
        reg.grant("p", ["patient-7"], [P], at=70.0)
        sel = begin_round(reg, P, 4, at=80.0)
        assert "patient-7" in sel.record_ids.tolist() and sel.commitment.count == 12
        verify_registry(reg, {**committed(), 4: sel.commitment})
    check_database(v2, registry_schema(v2))
    assert registry_schema(v2) == SCHEMA
    with ConsentRegistry(v2) as reg:  # opening it again changes nothing
        verify_registry(reg, {**committed(), 4: sel.commitment})


def test_a_format_1_receipt_still_checks(v2: Path) -> None:
    receipt = Receipt.loads((DATA / "consent-v2.receipt-s1.json").read_text())
    assert set(receipt.salts) == {"2", "3"}
    verdicts = check_receipt(receipt, committed())
    assert [(v.round, v.record_id, v.status) for v in verdicts] == [
        (1, "2", "used"),
        (1, "3", "used"),
        (2, "2", "not-used"),  # withdrawn at 20, before round 2
        (2, "3", "not-used"),
        (3, "2", "not-used"),
        (3, "3", "not-used"),
    ]


def _set_v2_ids(path: Path, blob: bytes) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE rounds SET ids = ? WHERE round = 2", (blob,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("blob", "refusal"),
    [
        (b"\x01" * 12, "malformed record list"),
        (np.array([5, 4], dtype="<i8").tobytes(), "not a sorted subset of its leaves"),
    ],
)
def test_a_malformed_format_2_round_is_refused_and_nothing_upgraded(
    v2: Path, blob: bytes, refusal: str
) -> None:
    _set_v2_ids(v2, blob)
    for readonly in (True, False):
        with pytest.raises(ConsentError, match=rf"^round at ledger entry 2 .*{refusal}"):
            ConsentRegistry(v2, readonly=readonly)
    assert _format(v2) == FORMAT_V2  # the writer's upgrade was rolled back
    check_database(v2, SCHEMA_V2)


def test_upgrading_twice_is_a_no_op(v2: Path) -> None:
    ConsentRegistry(v2).close()
    conn = sqlite3.connect(v2, isolation_level=None)
    try:
        _upgrade(conn)  # a second writer that raced the first finds it done
    finally:
        conn.close()
    check_database(v2, SCHEMA)
    with ConsentRegistry(v2, readonly=True) as reg:
        verify_registry(reg, committed())
