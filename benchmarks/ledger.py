"""Ledger benchmark: append throughput, proof sizes and proof times at several log sizes.

    python benchmarks/ledger.py [--sizes 10000,100000,1000000] [--out FILE.md]

Rows, all on one SQLite file with WAL + synchronous=FULL:
- "single ... verified": one record entry signed per entry by a member, one transaction each.
- "batched ... verified": records each signed by a member (signed before the clock starts),
  signatures checked against genesis inside append_many.
- "batched ... log only": Entry objects (canonical encoding not yet cached) appended with
  verify=False, i.e. what a replica does after it verified, or a node appending its own records.
- "batched ... raw bytes": pre-encoded entry bytes: SQLite + hashing + tree rows only.
The log-only rows and the growth to each proof size use one pre-signed template with a distinct
time per entry; those entries' signatures do not verify (time is signed) and are never checked.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import Entry, Ledger, make_record, merkle


def _consortium() -> tuple[NodeIdentity, Genesis]:
    member = NodeIdentity.generate("bench")
    genesis = Genesis.ceremony("bench", [member], [Purpose("bench")], 0)
    return member, genesis


def _records(member: NodeIdentity, genesis: Genesis, n: int, start: int = 0) -> list[Entry]:
    """n distinct records sharing one signature template: fast to build, distinct leaves."""
    return [
        make_record(member, "record", {"i": i, "pad": b"\x00" * 64}, i, genesis)
        for i in range(start, start + n)
    ]


def _template_entries(member: NodeIdentity, genesis: Genesis, n: int, start: int) -> list[Entry]:
    tmpl = make_record(member, "record", {"pad": b"\x00" * 64}, 0, genesis)
    return [Entry(tmpl.kind, tmpl.author, tmpl.body, tmpl.signatures, start + i) for i in range(n)]


def _median_us(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def throughput(tmp: Path, batch: int) -> list[tuple[str, float]]:
    member, genesis = _consortium()
    rows: list[tuple[str, float]] = []
    with Ledger.create(tmp / "tp.db", genesis) as led:
        singles = _records(member, genesis, 300)
        t = time.perf_counter()
        for e in singles:
            led.append(e)
        rate = 300 / (time.perf_counter() - t)
        rows.append(("single append, verified (1 tx + fsync each)", rate))
        signed = _records(member, genesis, 20 * batch // 10, start=1000)
        t = time.perf_counter()
        for i in range(0, len(signed), batch):
            led.append_many(signed[i : i + batch])
        rate = len(signed) / (time.perf_counter() - t)
        rows.append((f"batched append x{batch}, verified", rate))
        n = 50 * batch
        entries = _template_entries(member, genesis, n, 10**6)
        t = time.perf_counter()
        for i in range(0, n, batch):
            led.append_many(entries[i : i + batch], verify=False)
        rows.append(
            (f"batched append x{batch}, log only (pre-verified)", n / (time.perf_counter() - t))
        )
        datas = [e.data for e in entries]  # encoding already cached: isolates SQLite + hashing
        t = time.perf_counter()
        for i in range(0, n, batch):
            with led._transaction():
                led._insert(datas[i : i + batch])
        rows.append((f"batched append x{batch}, raw bytes", n / (time.perf_counter() - t)))
        assert led.fsck() == led.root()
    return rows


def proofs(tmp: Path, sizes: list[int], batch: int) -> list[tuple[int, str, int, float, float]]:
    member, genesis = _consortium()
    out: list[tuple[int, str, int, float, float]] = []
    with Ledger.create(tmp / "proofs.db", genesis) as led:
        for size in sorted(sizes):
            while led.size < size:
                n = min(10 * batch, size - led.size)
                led.append_many(_template_entries(member, genesis, n, led.size), verify=False)
            root = led.root()
            index, old = size // 3 + 1, size // 2 + 1
            leaf = led.leaf_hash(index)
            old_root = led.root(old)
            inc = led.inclusion_proof(index, size)
            con = led.consistency_proof(old, size)
            gen_i = _median_us(lambda: led.inclusion_proof(index, size), 50)  # noqa: B023
            ver_i = _median_us(
                lambda: merkle.verify_inclusion(index, size, leaf, inc, root),  # noqa: B023
                50,
            )
            gen_c = _median_us(lambda: led.consistency_proof(old, size), 50)  # noqa: B023
            ver_c = _median_us(
                lambda: merkle.verify_consistency(old, size, old_root, root, con),  # noqa: B023
                50,
            )
            out.append((size, "inclusion", 32 * len(inc), gen_i, ver_i))
            out.append((size, "consistency", 32 * len(con), gen_c, ver_c))
        out_db = led.path.stat().st_size
    print(f"(ledger file at {max(sizes)} entries: {out_db / 1e6:.0f} MB)", file=sys.stderr)
    return out


# ---- HOOK: the lead adds store MB/s and audit time here ------------------------------------------
def extra_sections(tmp: Path) -> list[str]:
    """Further markdown sections (store throughput, audit time); empty until those layers land."""
    try:
        from consortium.store.bench import measure_throughput  # type: ignore[import-not-found]
    except ImportError:
        return []
    result = measure_throughput(tmp)
    if isinstance(result, dict):
        rows = [
            f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in result.items()
        ]
        return [
            "## Store (consortium.store.bench.measure_throughput)\n\n| metric | value |\n"
            "|---|---:|\n" + "\n".join(rows)
        ]
    return [str(result)]


def audit_time(tmp: Path, n: int) -> str:
    """Build a run folder of n signed records with a final head every 1000, time `audit` on it."""
    from consortium.audit import audit
    from consortium.core.genesis import Genesis, Purpose
    from consortium.ledger.entries import make_record

    folder = tmp / f"audit-{n}"
    folder.mkdir()
    ids = [NodeIdentity.generate(f"m{i}") for i in range(3)]
    genesis = Genesis.ceremony("bench", ids, [Purpose("research")], 1)
    t0 = time.perf_counter()
    with Ledger.create(folder / "ledger.sqlite", genesis) as led:
        batch = []
        for k in range(n):
            body = {"round": k, "participants": [i.node_id for i in ids], "loss": 0.5}
            batch.append(make_record(ids[k % 3], "record", body, k, genesis))
            if len(batch) == 1000 or k == n - 1:
                led.append_many(batch, verify=False)  # signed just above by members
                batch = []
                for ident in ids[: genesis.quorum]:
                    led.sign_head(ident, k)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = audit(folder)
    took = time.perf_counter() - t0
    return (
        f"## Audit\n\n| entries | final heads | audit (s) | entries/s | build (s) |\n"
        f"|---:|---:|---:|---:|---:|\n"
        f"| {report.entries:,} | {report.final_heads} | {took:.2f} | {report.entries / took:,.0f} "
        f"| {build:.1f} |"
    )


# ---- end of hook ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--audit", type=int, default=100_000, help="entries for the audit timing")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    lines = ["## Ledger appends", "", "| operation | entries/s |", "|---|---:|"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lines += [f"| {name} | {rate:,.0f} |" for name, rate in throughput(tmp, args.batch)]
        lines += [
            "",
            "## Proofs",
            "",
            "| log size | proof | bytes | generate (µs, median) | verify (µs, median) |",
            "|---:|---|---:|---:|---:|",
        ]
        lines += [
            f"| {size:,} | {kind} | {nbytes} | {gen:.0f} | {ver:.0f} |"
            for size, kind, nbytes, gen, ver in proofs(tmp, sizes, args.batch)
        ]
        for section in extra_sections(tmp):
            lines += ["", section]
        if args.audit:
            lines += ["", audit_time(tmp, args.audit)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
