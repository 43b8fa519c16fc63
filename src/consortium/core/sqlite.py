"""Opening a node folder's SQLite files for reading only (the auditor, inspection commands)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_for_reading(path: Path) -> sqlite3.Connection:
    """A connection that cannot change `path` (`query_only`) and never creates it.

    It is opened read-write underneath, as SQLite intends: a `mode=ro` connection to a WAL
    database creates the `-wal` and `-shm` files and cannot remove them, leaving them in the
    folder it only read; this one removes them on close, like any writer. Nor does it set a
    journal mode, which would rewrite the file's header."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn
