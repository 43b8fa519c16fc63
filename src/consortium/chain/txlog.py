"""Append-only record of every transaction sent to the embedded chain, for replay.

eth-tester keeps its chain in memory only. Rather than serialise py-evm's internal database, we
record the signed raw bytes of every transaction in the order it was mined, with a digest of its
receipt. Reopening replays them into a fresh eth-tester chain (whose genesis and pre-funded
accounts are fixed), which rebuilds the same state; a receipt that comes out differently means the
record was altered, and opening fails. The contract reads no block timestamps, so replay is exact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from consortium.core.encoding import digest
from consortium.core.errors import ChainError
from consortium.core.sqlite import open_for_reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    seq INTEGER PRIMARY KEY,
    raw BLOB NOT NULL,
    tx_hash BLOB NOT NULL,
    receipt_digest BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def receipt_digest(receipt: Any) -> bytes:
    """SHA-256 over what a transaction did: status, gas, block, created address and logs."""
    logs = [
        [str(log["address"]), [bytes(t) for t in log["topics"]], bytes(log["data"])]
        for log in receipt["logs"]
    ]
    created = receipt.get("contractAddress")
    return digest(
        {
            "status": int(receipt["status"]),
            "gas_used": int(receipt["gasUsed"]),
            "block": int(receipt["blockNumber"]),
            "contract": str(created) if created else None,
            "logs": logs,
        }
    )


class TxLog:
    """SQLite file holding the raw transactions of one embedded chain, in mining order."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """`readonly`: open an existing record without writing anything (the auditor)."""
        self.path = Path(path)
        try:
            if readonly:
                if not self.path.is_file():
                    raise ChainError(f"no chain record at {self.path}")
                self._db = open_for_reading(self.path)
                return
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an anchor is not lost once returned
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            if hasattr(self, "_db"):
                self._db.close()
            raise ChainError(f"cannot open chain record {self.path}: {exc}") from exc

    def entries(self) -> Iterator[tuple[int, bytes, bytes, bytes]]:
        """(seq, raw transaction, tx hash, receipt digest), oldest first, numbered from 1."""
        try:
            # Values that are not blobs come back as NULL: nothing else may pass for bytes.
            rows = self._db.execute(
                "SELECT seq, "
                + ", ".join(
                    f"CASE typeof({c}) WHEN 'blob' THEN {c} END"
                    for c in ("raw", "tx_hash", "receipt_digest")
                )
                + " FROM txs ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as exc:
            raise ChainError(f"cannot read chain record {self.path}: {exc}") from exc
        for n, (seq, raw, tx_hash, rdigest) in enumerate(rows, 1):
            if seq != n:
                raise ChainError(f"{self.path} was altered: transaction {n} is missing")
            if raw is None or tx_hash is None or rdigest is None:
                raise ChainError(f"{self.path} was altered: transaction {n} is malformed")
            yield seq, raw, tx_hash, rdigest

    def append(self, raw: bytes, tx_hash: bytes, rdigest: bytes) -> None:
        try:
            self._db.execute(
                "INSERT INTO txs (raw, tx_hash, receipt_digest) VALUES (?, ?, ?)",
                (raw, tx_hash, rdigest),
            )
        except sqlite3.Error as exc:
            raise ChainError(f"cannot write chain record {self.path}: {exc}") from exc

    def get_meta(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise ChainError(f"cannot read chain record {self.path}: {exc}") from exc
        return None if row is None else str(row[0])

    def meta_keys(self) -> list[str]:
        try:
            return [str(k) for (k,) in self._db.execute("SELECT key FROM meta ORDER BY key")]
        except sqlite3.Error as exc:
            raise ChainError(f"cannot read chain record {self.path}: {exc}") from exc

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        except sqlite3.Error as exc:
            raise ChainError(f"cannot write chain record {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()
