"""Tamper benchmark: does `consortium audit` notice every change to a run folder, and say where?

    consortium bench tamper [--flips 1000] [--seed 0] [--rounds 2] [--out FILE.md]
        [--keep DIR] [--json]

Builds a real run folder: 3 nodes in one process over the in-process transport, `--rounds`
rounds of SecAgg+ training with consent registries (node0's also holds a withdrawal, an expiry
change and an erasure, so every kind of consent event is there), every final head anchored on
each node's embedded chain. Then, `--flips` times, it mutates one file of node0's folder, runs
`audit` on it and restores the file. Mutations, over every file of the folder:

- `bit`: flip one random bit of the file's raw bytes;
- `truncate`: cut the file at a random length;
- `cell` (SQLite files): flip one bit of one value (integer, real, text or blob) of a random row
  and column of a random table, written back through SQL (triggers set aside and restored
  verbatim, so the file stays a consistent database with the same schema);
- `delete-row` (SQLite files): delete a random row of a random table.

Each outcome is one of:

- `detected`: audit raised AuditError naming the mutated file (and, where the mutation says
  which, the ledger entry, tree head, consent event or round, or the block's CID);
- `unchanged`: audit passed and the content it reads is the same: the SQLite file dumps to the
  same schema and rows (the flip hit unused bytes of a page, a header field, free space), or a
  JSON file parses to the same value;
- `not read`: audit passed and the change is confined to what audit does not read, by design
  (private keys, the node's local config and status, the compiled-contract cache it recompiles,
  the node's own `my_votes` and `my_secagg` tables);
- `limit`: audit passed; the change removed evidence nothing else commits to and no conclusion
  rests on: a cosignature beyond what finality needs (every entry stays covered by a final
  head), or the last transaction of the embedded chain's record (an anchor that, for all anyone
  can tell, was never sent: the embedded chain is only as good as the folder that holds it);
- `missed`: audit passed though the content it reads changed;
- `misnamed`: AuditError that does not name where the mutation was;
- `crashed`: any other exception (a traceback in the CLI).

`missed`, `misnamed` and `crashed` must be zero; `main` returns 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from consortium.audit import audit
from consortium.consent.erasure import erase_subject
from consortium.consent.registry import ConsentRegistry
from consortium.core.errors import AuditError
from consortium.core.identity import NodeIdentity
from consortium.core.layout import CONSENT_FILE
from consortium.node.config import RunConfig, load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport

#: Files audit does not read, by design (see `audit.auditor`'s docstring), by name or prefix.
UNTRUSTED_FILES = (
    "node.key",
    "tls.key",
    "node.json",
    "node.toml",
    "status.json",
    "node.log",
    "node.lock",
)
UNTRUSTED_PREFIXES = ("chain/TreeHeadAnchor-", "chain/chain.lock")
#: Tables of trusted SQLite files that audit does not read, by design.
UNTRUSTED_TABLES = {"ledger.sqlite": {"my_votes", "my_secagg"}}
#: Changes audit cannot see, by design: nothing anyone else holds commits to them (see `LIMITS`).
LIMITS = {
    ("ledger.sqlite", "delete-row", "cosignatures"): "a cosignature finality does not rest on",
    ("chain/chain.sqlite", "delete-row", "txs (last row)"): "the embedded chain's last transaction",
}
OUTCOMES = ("detected", "unchanged", "not read", "limit", "missed", "misnamed", "crashed")
FAILURES = ("missed", "misnamed", "crashed")


# -- the run folder --------------------------------------------------------------------------------


def build_run(root: Path, rounds: int = 2, seed: int = 0) -> Path:
    """Train a 3-node run (consent, SecAgg+, anchoring every round) under `root`; node0's dir."""
    dirs = create_consortium(root, 3, seed=seed, reproducible=True, consent=True)
    with ConsentRegistry(dirs[0] / CONSENT_FILE) as registry:  # every kind of consent event
        subjects = sorted({s.subject for s in registry.state()})
        registry.withdraw(subjects[0], at=1000.0)
        registry.set_expiry(subjects[1], None, 4_000_000_000.0, at=1001.0)
        erase_subject(registry, subjects[2], at=1002.0)
    run = RunConfig(
        rounds=rounds,
        seed=seed,
        epochs=1,
        min_updates=3,
        anchor_every=1,
        secure_aggregation="secagg+",
        collect_timeout=30.0,
        round_timeout=60.0,
        started=1,
    )

    async def go() -> None:
        net = InProcessNetwork()
        nodes = []
        for d in dirs:
            ident = NodeIdentity.load(d)
            cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.05})
            nodes.append(Node(d, ident, InProcessTransport(net, ident.node_id), cfg))
        for node in nodes:
            await node.start()
        try:
            report = await nodes[0].propose_run(run)  # a quorum must agree to the run
            if not report["started"]:
                raise SystemExit(f"run not agreed: {report}")
            await asyncio.wait_for(
                asyncio.gather(*(n.finished.wait() for n in nodes)), timeout=60 * rounds
            )
        finally:
            for node in nodes:
                await node.stop()  # waits for anchors in flight

    asyncio.run(go())
    return dirs[0]


# -- what audit reads, logically -------------------------------------------------------------------


def _sqlite_view(path: Path) -> dict[str, Any]:
    """Schema and every row (with its SQLite type) of every table, read without writing."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    conn.text_factory = bytes
    try:
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
        view: dict[str, Any] = {"": sorted(map(repr, schema))}
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            name = table.decode()
            cols = [r[1].decode() for r in conn.execute(f'PRAGMA table_info("{name}")')]
            sel = ", ".join(f'typeof("{c}"), "{c}"' for c in cols)
            rows = conn.execute(f'SELECT {sel} FROM "{name}"').fetchall()
            view[name] = sorted(map(repr, rows))
        return view
    finally:
        conn.close()


def logical_view(path: Path) -> Any:
    """What audit's verdict depends on, as comparable data (a string when unreadable)."""
    try:
        if path.suffix == ".sqlite":
            return _sqlite_view(path)
        if path.suffix in (".json", ".pub"):
            return json.loads(path.read_bytes())
        return path.read_bytes()
    except (sqlite3.Error, ValueError, OSError) as exc:
        return f"unreadable: {exc}"


def untrusted(rel: str) -> bool:
    return rel in UNTRUSTED_FILES or rel.startswith(UNTRUSTED_PREFIXES)


# -- mutations -------------------------------------------------------------------------------------


@dataclass
class Mutation:
    file: str  # relative to the folder
    op: str  # bit | truncate | cell | delete-row
    detail: str  # what exactly (table.column row ...)
    expect: tuple[str, ...]  # substrings a refusal must contain


def _label(rel: str) -> str:
    """How audit names the file."""
    if rel.startswith("store/"):
        return "store"
    return rel


def _expect_bytes(rel: str) -> tuple[str, ...]:
    if rel.startswith("store/"):
        return ("store", Path(rel).name)  # the block's file name is its CID
    return (_label(rel),)


def _flip_value(value: Any, rng: random.Random) -> Any:
    if isinstance(value, int):
        flipped = (value ^ (1 << rng.randrange(64))) & (2**64 - 1)
        return flipped - 2**64 if flipped >= 2**63 else flipped
    if isinstance(value, float):
        (bits,) = struct.unpack("<Q", struct.pack("<d", value))
        return struct.unpack("<d", struct.pack("<Q", bits ^ (1 << rng.randrange(64))))[0]
    data = bytearray(value)
    if not data:
        raise ValueError("empty value")
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _row_expect(rel: str, table: str, row: dict[str, Any], column: str | None) -> tuple[str, ...]:
    """Where audit must say a change to this row (this column, or the whole row) is."""
    if rel == "ledger.sqlite":
        if table == "entries" and column in ("data", "leaf_hash"):
            return (rel, f"entry {row['idx']}")
        if table in ("heads", "cosignatures"):
            return (rel, "tree head")
    if rel == "consent.sqlite":
        if table == "events":
            return (rel, f"event {row['seq']}") if column not in (None, "seq") else (rel, "event")
        if table == "rounds" and isinstance(row["round"], int):
            if column not in (None, "round", "purpose"):
                return (rel, f"round at ledger entry {row['round']}")
            return (rel, "round at ledger entry")
    return (rel,)


class _Db:
    """Edits through SQL with the table's triggers set aside (and restored verbatim)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.text_factory = bytes
        # A flipped bit does not respect CHECK constraints (events.kind): let it through.
        self.conn.execute("PRAGMA ignore_check_constraints=ON")

    def tables(self) -> list[str]:
        rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return sorted(n.decode() for (n,) in rows if not n.startswith(b"sqlite_"))

    def edit(self, table: str, sql: str, args: tuple[Any, ...]) -> int:
        triggers = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='trigger' AND tbl_name=?", (table,)
        ).fetchall()
        self.conn.execute("BEGIN")
        try:
            for name, _ in triggers:
                self.conn.execute(f'DROP TRIGGER "{name.decode()}"')
            n = self.conn.execute(sql, args).rowcount
            for _, text in triggers:
                self.conn.execute(text.decode())
        except sqlite3.Error:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return n

    def close(self) -> None:
        self.conn.close()


def _mutate_sqlite(path: Path, rel: str, op: str, rng: random.Random) -> Mutation | None:
    """One cell flip or row deletion, or None if the pick could not be applied (a constraint)."""
    db = _Db(path)
    try:
        # Every column of every table is as likely to be hit.
        columns = {
            t: [r[1].decode() for r in db.conn.execute(f'PRAGMA table_info("{t}")')]
            for t in db.tables()
        }
        table, column = rng.choice([(t, c) for t, cs in columns.items() for c in cs])
        cols = columns[table]
        sel = ", ".join(f'typeof("{c}"), "{c}"' for c in cols)
        # A cell flip needs a value (NULL has no bits); a deletion takes any row.
        nonnull = "" if op == "delete-row" else f' WHERE "{column}" IS NOT NULL'
        rows = db.conn.execute(f'SELECT {sel} FROM "{table}"{nonnull}').fetchall()
        if not rows:
            return None  # e.g. no equivocation was ever recorded
        picked = rng.choice(rows)
        kinds = {c: picked[2 * i].decode() for i, c in enumerate(cols)}
        row = {c: picked[2 * i + 1] for i, c in enumerate(cols)}
        # Text comes back as bytes (it may not be UTF-8): bind it back as text.
        where = " AND ".join(
            f'"{c}" IS CAST(? AS TEXT)' if kinds[c] == "text" else f'"{c}" IS ?' for c in cols
        )
        args = tuple(row[c] for c in cols)
        if op == "delete-row":
            last = db.conn.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()[0]
            is_last = table == "txs" and row["seq"] == last
            n = db.edit(table, f'DELETE FROM "{table}" WHERE {where}', args)
            detail = f"{table} (last row)" if is_last else table
            return Mutation(rel, op, detail, _row_expect(rel, table, row, None)) if n else None
        new = _flip_value(row[column], rng)
        value = "CAST(? AS TEXT)" if kinds[column] == "text" else "?"
        sql = f'UPDATE "{table}" SET "{column}" = {value} WHERE {where}'
        if db.edit(table, sql, (new, *args)) != 1:
            return None
        return Mutation(rel, op, f"{table}.{column}", _row_expect(rel, table, row, column))
    except (sqlite3.Error, ValueError):
        return None  # e.g. a unique key collision or a CHECK: pick again
    finally:
        db.close()


def weight(rel: str, files: list[str]) -> float:
    """How often a file is mutated: mostly what audit reads; every block of the store together
    as often as one database; files audit does not read now and then (it must ignore them)."""
    if untrusted(rel):
        return 0.25
    if rel.startswith("store/"):
        return 4 / sum(f.startswith("store/") for f in files)
    return {"ledger.sqlite": 6.0, "consent.sqlite": 6.0, "chain/chain.sqlite": 3.0}.get(rel, 1.5)


def mutate(folder: Path, files: list[str], rng: random.Random) -> Mutation:
    """Apply one random mutation to one random file of `folder`."""
    weights = [weight(f, files) for f in files]
    while True:
        rel = rng.choices(files, weights)[0]
        path = folder / rel
        if path.stat().st_size == 0:  # chain.lock: nothing to flip or cut
            continue
        sqlite = path.suffix == ".sqlite"
        op = rng.choices(
            ["bit", "truncate", "cell", "delete-row"] if sqlite else ["bit", "truncate"],
            [4, 1, 4, 1] if sqlite else [6, 1],
        )[0]
        os.chmod(path, 0o644)
        if op in ("cell", "delete-row"):
            found = _mutate_sqlite(path, rel, op, rng)
            if found is None:
                continue
            return found
        data = bytearray(path.read_bytes())
        if op == "bit":
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
            detail = f"byte {pos}"
        else:
            cut = rng.randrange(len(data))
            del data[cut:]
            detail = f"to {cut} bytes"
        path.write_bytes(bytes(data))
        return Mutation(rel, op, detail, _expect_bytes(rel))


# -- trials ----------------------------------------------------------------------------------------


@dataclass
class Trial:
    mutation: Mutation
    outcome: str
    message: str


def folder_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _changed_tables(before: Any, after: Any) -> set[str] | None:
    """The tables whose rows differ, or None if the views are not both SQLite views."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    return {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}


def classify(m: Mutation, before: Any, after: Any, error: BaseException | None) -> str:
    if isinstance(error, AuditError):
        return "detected" if all(s in str(error) for s in m.expect) else "misnamed"
    if error is not None:
        return "crashed"
    if untrusted(m.file):
        return "not read"
    if before == after:
        return "unchanged"
    changed = _changed_tables(before, after)
    if changed is not None and changed <= UNTRUSTED_TABLES.get(m.file, set()):
        return "not read"
    if (m.file, m.op, m.detail) in LIMITS:
        return "limit"
    return "missed"


def run_trials(folder: Path, flips: int, seed: int) -> list[Trial]:
    """Mutate, audit, classify and restore, `flips` times; the folder ends as it began."""
    rng = random.Random(seed)
    files = folder_files(folder)
    originals = {rel: (folder / rel).read_bytes() for rel in files}
    modes = {rel: (folder / rel).stat().st_mode & 0o777 for rel in files}
    views = {rel: logical_view(folder / rel) for rel in files}
    audit(folder, workers=1)  # the clean folder passes
    trials: list[Trial] = []
    for _ in range(flips):
        m = mutate(folder, files, rng)
        after = logical_view(folder / m.file)
        error: BaseException | None = None
        try:
            audit(folder, workers=1)
        except Exception as exc:
            error = exc
        outcome = classify(m, views[m.file], after, error)
        trials.append(
            Trial(m, outcome, "" if error is None else f"{type(error).__name__}: {error}")
        )
        path = folder / m.file
        path.write_bytes(originals[m.file])
        os.chmod(path, modes[m.file])
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return trials


# -- report ----------------------------------------------------------------------------------------


def _group(rel: str) -> str:
    if rel.startswith("store/"):
        return "store blocks"
    if rel.startswith("chain/TreeHeadAnchor-"):
        return "chain/TreeHeadAnchor-*.json"
    return rel


def table(trials: list[Trial]) -> str:
    keys = sorted({(_group(t.mutation.file), t.mutation.op) for t in trials})
    head = ["file", "kind", "flips", *OUTCOMES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    total: Counter[str] = Counter()
    for key in keys:
        got = Counter(t.outcome for t in trials if (_group(t.mutation.file), t.mutation.op) == key)
        total.update(got)
        cells = [*key, str(sum(got.values())), *(str(got[o]) for o in OUTCOMES)]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**all**", "", str(len(trials)), *(str(total[o]) for o in OUTCOMES)]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell_table(trials: list[Trial]) -> str:
    """Cell flips and row deletions by table and column."""
    rows = Counter(
        (t.mutation.file, t.mutation.detail, t.outcome)
        for t in trials
        if t.mutation.op in ("cell", "delete-row")
    )
    keys = sorted({(f, d) for f, d, _ in rows})
    lines = ["| file | table.column | " + " | ".join(OUTCOMES) + " |", "|" + "---|" * 9]
    for f, d in keys:
        lines.append(f"| {f} | {d} | " + " | ".join(str(rows[(f, d, o)]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write the markdown report here too")
    ap.add_argument("--keep", type=Path, help="build the run here and keep it")
    ap.add_argument("--json", action="store_true", help="print every trial as a JSON line")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tamper-")) if args.keep is None else args.keep
    try:
        t0 = time.perf_counter()
        folder = build_run(tmp / "run", args.rounds, args.seed)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        trials = run_trials(folder, args.flips, args.seed)
        spent = time.perf_counter() - t0
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    bad = [t for t in trials if t.outcome in FAILURES]
    report = "\n\n".join(
        [
            f"run folder built in {built:.1f} s; {len(trials)} mutations audited in "
            f"{spent:.1f} s ({1000 * spent / max(1, len(trials)):.0f} ms each)",
            table(trials),
            cell_table(trials),
            *(
                [
                    "failures:\n"
                    + "\n".join(
                        f"- {t.outcome}: {t.mutation.file} {t.mutation.op} {t.mutation.detail} "
                        f"(expected {t.mutation.expect}): {t.message[:300]}"
                        for t in bad
                    )
                ]
                if bad
                else []
            ),
        ]
    )
    print(report)
    if args.json:
        for t in trials:
            print(json.dumps({**vars(t.mutation), "outcome": t.outcome, "message": t.message}))
    if args.out:
        args.out.write_text(report + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
