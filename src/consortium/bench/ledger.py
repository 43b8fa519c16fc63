"""Ledger benchmark: append throughput, proof sizes and proof times at several log sizes, audit
time, each verifying figure as a fraction of the machine's signature-verification limit.

    consortium bench ledger [--sizes 10000,100000,1000000] [--audit N] [--rounds R] [--out F]

The limit: Ed25519 verifications per second on all cores, measured in this run: one process per
core (`os.sched_getaffinity`), each verifying a record's signature in a loop with the very
`cryptography` call the ledger makes (`ledger.parallel.verification_limit`). The machine may be
shared, and its load drifts within seconds, so each verifying figure is measured in `--rounds`
rounds, each between two measurements of the limit; the table gives the medians and the range of
rate / limit. A verified append or an audited entry checks one signature here, so that fraction
is the share of the machine's verifying capacity reached; the rest goes to decoding, hashing,
SQLite and moving work between processes.

Rows, all on one SQLite file with WAL + synchronous=FULL:
- "single ... verified": one record entry signed per entry by a member, one transaction each.
- "batched ... verified": records each signed by a member (signed before the clock starts, so
  their canonical bytes are cached, as `make_record` leaves them), signatures checked against
  genesis inside append_many (on every core).
- "batched ... verified, from bytes": the same records as a peer sends them: bytes decoded
  (`Entry.from_bytes`, canonical check included) inside the clock, then as above.
- "batched ... log only": Entry objects (canonical encoding not yet cached) appended with
  verify=False, i.e. what a replica does after it verified, or a node appending its own records.
- "batched ... raw bytes": pre-encoded entry bytes: SQLite + hashing + tree rows only.
The log-only rows and the growth to each proof size use one pre-signed template with a distinct
time per entry; those entries' signatures do not verify (time is signed) and are never checked.
The worker processes are started before the clock (a long-lived process keeps its pool, and the
audit uses the same one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consortium.core.encoding import Domain, domain_prefix
from consortium.core.genesis import Genesis, Purpose
from consortium.core.identity import NodeIdentity
from consortium.ledger import Entry, Ledger, make_record, merkle, parallel


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


def verification_limit() -> float:
    """Ed25519 verifications/s on all cores now, for a record's signature (see the docstring)."""
    member, genesis = _consortium()
    e = make_record(member, "record", {"i": 0, "pad": b"\x00" * 64}, 0, genesis)
    payload = domain_prefix(Domain.RECORD, genesis.digest()) + e.signed_bytes
    return parallel.verification_limit(member.public_key, e.signatures[e.author], payload)


@dataclass
class Paired:
    """A verifying rate measured `rounds` times, each round between two measurements of the
    limit (the machine is shared: its load drifts within seconds): medians, and the spread of
    rate / limit over the rounds."""

    rate: float
    limit: float
    fraction: float
    low: float
    high: float

    @classmethod
    def measure(cls, run: Callable[[int], float], rounds: int) -> Paired:
        """`run(k)`: round k's rate (entries/s)."""
        rates, limits, fractions = [], [], []
        before = verification_limit()
        for k in range(rounds):
            rate = run(k)
            after = verification_limit()
            limit = (before + after) / 2
            rates.append(rate)
            limits.append(limit)
            fractions.append(rate / limit)
            before = after
        return cls(
            statistics.median(rates),
            statistics.median(limits),
            statistics.median(fractions),
            min(fractions),
            max(fractions),
        )

    def cells(self) -> str:
        return (
            f"{self.rate:,.0f} | {self.limit:,.0f} | **{self.fraction:.2f}** "
            f"({self.low:.2f} to {self.high:.2f})"
        )


def throughput(
    tmp: Path, batch: int, rounds: int
) -> tuple[list[tuple[str, float]], list[tuple[str, Paired]]]:
    """(operation, entries/s) of the rows that verify nothing or one entry at a time, and
    (operation, paired measure) of the batched verified rows."""
    member, genesis = _consortium()
    rows: list[tuple[str, float]] = []
    paired: list[tuple[str, Paired]] = []
    per_round = 5 * batch
    with Ledger.create(tmp / "tp.db", genesis) as led:
        singles = _records(member, genesis, 300)
        t = time.perf_counter()
        for e in singles:
            led.append(e)
        rate = 300 / (time.perf_counter() - t)
        rows.append(("single append, verified (1 tx + fsync each)", rate))
        signed = _records(member, genesis, rounds * per_round, start=1000)
        verification_limit()  # start the pool's workers before any clock

        def objects(k: int) -> float:
            part = signed[k * per_round : (k + 1) * per_round]
            t = time.perf_counter()
            for i in range(0, len(part), batch):
                led.append_many(part[i : i + batch])
            return len(part) / (time.perf_counter() - t)

        paired.append((f"batched append x{batch}, verified", Paired.measure(objects, rounds)))
        datas = [e.data for e in _records(member, genesis, rounds * per_round, start=10**6)]

        def from_bytes(k: int) -> float:
            part = datas[k * per_round : (k + 1) * per_round]
            t = time.perf_counter()
            for i in range(0, len(part), batch):
                led.append_many([Entry.from_bytes(d) for d in part[i : i + batch]])
            return len(part) / (time.perf_counter() - t)

        paired.append(
            (
                f"batched append x{batch}, verified, from bytes (decoded too)",
                Paired.measure(from_bytes, rounds),
            )
        )
        n = 50 * batch
        entries = _template_entries(member, genesis, n, 10**7)
        t = time.perf_counter()
        for i in range(0, n, batch):
            led.append_many(entries[i : i + batch], verify=False)
        rate = n / (time.perf_counter() - t)
        rows.append((f"batched append x{batch}, log only (pre-verified)", rate))
        datas = [e.data for e in entries]  # encoding already cached: isolates SQLite + hashing
        t = time.perf_counter()
        for i in range(0, n, batch):
            with led._transaction():
                led._insert(datas[i : i + batch])
        rate = n / (time.perf_counter() - t)
        rows.append((f"batched append x{batch}, raw bytes", rate))
        assert led.fsck() == led.root()
    return rows, paired


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
        from consortium.store.bench import measure_throughput
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


def audit_time(tmp: Path, n: int, rounds: int) -> tuple[int, int, float, Paired]:
    """Build a run folder of n signed records with a final head every 1000, then time `audit`
    on it `rounds` times: (entries, final heads, build seconds, paired measure)."""
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
    found: list[tuple[int, int]] = []

    def run(_k: int) -> float:
        t = time.perf_counter()
        report = audit(folder)
        took = time.perf_counter() - t
        found.append((report.entries, report.final_heads))
        return report.entries / took

    measured = Paired.measure(run, rounds)
    return found[0][0], found[0][1], build, measured


# ---- end of hook ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--audit", type=int, default=100_000, help="entries for the audit timing")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each verifying figure")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows, paired = throughput(tmp, args.batch, args.rounds)
        proof_rows = proofs(tmp, sizes, args.batch)
        sections = extra_sections(tmp)
        audited = audit_time(tmp, args.audit, args.rounds) if args.audit else None
    cores = parallel.cpu_count()
    lines = [
        "## Ledger appends",
        "",
        f"Verifying rows: {args.rounds} rounds of {5 * args.batch:,} entries, each between two "
        f"measurements of the limit (Ed25519 verifications/s on {cores} cores, the same "
        "`cryptography` call, one process per core); medians, and the range of the fraction.",
        "",
        "| operation | entries/s | limit (verifications/s) | of the limit (range) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {name} | {p.cells()} |" for name, p in paired]
    lines += [f"| {name} | {rate:,.0f} | | |" for name, rate in rows]
    lines += [
        "",
        "## Proofs",
        "",
        "| log size | proof | bytes | generate (µs, median) | verify (µs, median) |",
        "|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {size:,} | {kind} | {nbytes} | {gen:.0f} | {ver:.0f} |"
        for size, kind, nbytes, gen, ver in proof_rows
    ]
    for section in sections:
        lines += ["", section]
    if audited:
        entries, finals, build, p = audited
        lines += [
            "",
            "## Audit",
            "",
            f"`audit` of a folder of {entries:,} entries ({finals} final heads, built in "
            f"{build:.1f} s), {args.rounds} times, each between two measurements of the limit; "
            "the whole audit (schema and integrity checks, genesis, heads, fsck) is timed.",
            "",
            "| entries | entries/s | limit (verifications/s) | of the limit (range) |",
            "|---:|---:|---:|---:|",
            f"| {entries:,} | {p.cells()} |",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
