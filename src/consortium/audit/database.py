"""Is an SQLite file of the folder intact, and exactly the schema its writer creates?

The auditor reads the ledger, consent registry and chain record through queries, which trust the
file's structure: a damaged index can hide a row from a lookup, and an edited schema can change
what a column holds. So before reading one, the auditor opens it for reading only and checks
`PRAGMA integrity_check` (every page, every index against its table) and that its tables,
indexes and triggers are exactly those of the writer's schema.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from consortium.core.errors import ConsortiumError
from consortium.core.sqlite import open_for_reading

Objects = set[tuple[str, str, str, str | None]]
_ROW_CONSTRAINTS = ("CHECK constraint failed in ", "NULL value in ")


def _objects(conn: sqlite3.Connection) -> Objects:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {(str(t), str(n), str(tb), None if s is None else str(s)) for t, n, tb, s in rows}


@functools.cache
def expected_objects(schema: str) -> frozenset[tuple[str, str, str, str | None]]:
    """The schema objects `schema` (a script of CREATE statements) makes in a new database."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema)
        return frozenset(_objects(conn))
    finally:
        conn.close()


def check_database(path: Path, schema: str, optional: str = "") -> None:
    """Raise ConsortiumError unless `path` passes SQLite's integrity check and holds exactly the
    objects of `schema`, plus any of `optional`'s (objects a writer creates on first use)."""
    wanted = expected_objects(schema)
    extra = expected_objects(f"{schema};\n{optional}") - wanted if optional else set()
    if not path.is_file():
        raise ConsortiumError(f"{path} is missing")
    try:
        conn = open_for_reading(path)
        try:
            problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(5)")]
            found = _objects(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConsortiumError(f"not a readable database: {exc}") from exc
    except UnicodeDecodeError as exc:  # SQLite's error message quotes a damaged schema's bytes
        raise ConsortiumError("not a readable database: its schema is not UTF-8") from exc
    # A value that breaks its column's CHECK or NOT NULL is left to the readers, which check
    # every value they read against its column and name the row (the event, the entry).
    damage = [p for p in problems if p != "ok" and not p.startswith(_ROW_CONSTRAINTS)]
    if damage:
        raise ConsortiumError(f"the database is damaged: {'; '.join(damage)}")
    if not wanted <= found or found - wanted - extra:
        odd = sorted((found ^ wanted) - extra, key=str)[0]
        raise ConsortiumError(f"the database schema was changed ({odd[0]} {odd[1]})")
