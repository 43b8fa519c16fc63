"""End-to-end round benchmark: whole rounds of real nodes, against Flower's SecAgg+ round.

    consortium bench round-e2e [--n 10,50,100] [--d 100000] [--rounds 5] [--grpc-n 10,20]
        [--compare-n 100] [--corrupt-fraction 0.02] [--flower | --no-flower]
        [--flower-python PATH] [--out FILE.md]

Training is replaced by a fixed vector of length d, as in Flower's benchmark: the run's task is
`consortium.bench.fixed_task:vector_<d>` (each member's `fit` returns its own fixed float32
vector), so a round costs what the rest costs: the round machine (beacon, leader, collection),
SecAgg+ (keys, shares, masked vectors, the survivor set every member signs, unmasking), the
voters' checks of the sum and their cosignatures, the ledger commit and the model in the store.

- **In-process** (`--n`): N real `Node`s on one asyncio loop over an `InProcessNetwork`
  (`bench rounds`' harness), every request counted by `CountingTransport`. Latency: on node 0,
  from the start of a round to its commit (`TimedNode`). Bytes: request and reply payloads each
  member sent and received, between node 0's commits; the round's leader (its record's
  `leader`) apart from the mean over the others, and the others against the floor 8·d (send one
  masked vector of d 32-bit words, receive one model). Signature verifications: every Ed25519
  verification any node makes (the bench counts calls of `verify` on the keys that
  `core.identity`, `ledger.entries` and `ledger.parallel` parse, and the signatures handed to
  the verification pool), and every check of a beacon partial (BLS, `protocol.beacon`).
- **gRPC processes** (`--grpc-n`): `consortium node start` processes with mutual TLS on
  127.0.0.1 (`node.sim.Cluster`, as `bench chaos` and the e2e tests start them); latency from
  node 0's ledger: the time between consecutive round entries (the leaders' clocks; one machine,
  one clock). Bytes and verifications are counted in-process only (the same messages).
- **Settings.** "default": what a run uses unless told otherwise, safe against a dishonest
  third (the complete graph, t = f + 1). "sparse": a stated corrupt fraction
  (`secagg_corrupt_fraction`, `--corrupt-fraction`), the sparse graph `secagg.sizing` sizes for
  it, at `--compare-n`.
- **Flower** (`--flower`): `benchmarks/flower_reference.py secagg` (Flower 1.41, Ray simulation)
  run by the separate venv's Python (`--flower-python`; Flower is never a dependency of
  consortium), in the same benchmark run, at `--compare-n`, d and `--rounds`: once with the
  same share graph as our sparse setting (num_shares = k + 1, threshold t), and once at the
  issue's reference point (num_shares 15, threshold 8). Its round is the sum of its four stage
  times inside the ServerApp.

An in-process size whose memory estimate (`MEMORY_FACTOR`·n²·4d bytes, from transcript version 1
where every voter held every masked vector: n = 100, d = 10^5 was OOM-killed at 17.5 GB on a
23 GB machine) exceeds the available memory is skipped with a note (`--no-memory-check`: run it).

Round 1 is left out everywhere: it also covers loading data and, for Flower, Ray starting its
client actors. p95 is NumPy's linear interpolation over the timed rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consortium.bench.fixed_task import task_spec
from consortium.bench.rounds import (
    SEED,
    ByteCounter,
    TimedNode,
    check_run,
    run_to_end,
    running_nodes,
)
from consortium.core import identity
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import quorum_for
from consortium.core.layout import LEDGER_FILE
from consortium.ledger import entries, parallel
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium
from consortium.protocol import beacon
from consortium.protocol.record import ROUND_KIND, run_records
from consortium.protocol.secagg import commitment
from consortium.protocol.secure_round import Consortium, make_params

REPO = Path(__file__).resolve().parents[3]
FLOWER_SCRIPT = REPO / "benchmarks" / "flower_reference.py"
FLOWER_PYTHON = REPO / ".tmp" / "flwr-venv" / "bin" / "python"
#: The issue's reference point for Flower at n = 100: 15 share holders (self + 14), threshold 8.
FLOWER_REFERENCE = (15, 8)
POLL = 0.25


# -- counting signature verifications (in this process) ------------------------------------------


@dataclass
class VerifyCounter:
    ed25519: int = 0
    beacon: int = 0


class _CountingKey:
    """An Ed25519 public key whose `verify` calls are counted."""

    def __init__(self, key: Ed25519PublicKey, counter: VerifyCounter) -> None:
        self._key, self._counter = key, counter

    def verify(self, signature: bytes, data: bytes) -> None:
        self._counter.ed25519 += 1
        self._key.verify(signature, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._key, name)


class _CountingKeys:
    """Stands in for the `Ed25519PublicKey` class in the modules that verify signatures."""

    def __init__(self, counter: VerifyCounter) -> None:
        self._counter = counter

    def from_public_bytes(self, raw: bytes) -> _CountingKey:
        return _CountingKey(Ed25519PublicKey.from_public_bytes(raw), self._counter)


def _clear_key_caches() -> None:
    entries._public_key.cache_clear()
    parallel._key.cache_clear()


@contextmanager
def counting_verifications(counter: VerifyCounter) -> Iterator[VerifyCounter]:
    """Count every signature verification of this process into `counter` while inside: the
    Ed25519 keys parsed by `core.identity`, `ledger.entries` and `ledger.parallel` (the
    modules that verify; cached keys are dropped on entry and exit), the signatures a
    `SignatureBatch` hands to worker processes (all valid in an honest run, so all checked),
    and beacon partials (`protocol.beacon.verify_partial`). The bench's instrument only."""
    keys = _CountingKeys(counter)
    batch_init = parallel.SignatureBatch.__init__
    check_partial = getattr(beacon, "verify_partial")  # noqa: B009 - imported there, not exported

    def pooled_init(
        self: parallel.SignatureBatch,
        prefix: bytes,
        checks: Any,
        workers: int | None = None,
    ) -> None:
        if len(checks) >= parallel.MIN_PARALLEL and parallel.workers_for(workers) > 1:
            counter.ed25519 += len(checks)  # checked in worker processes, not counted there
        batch_init(self, prefix, checks, workers)

    def counted_partial(*args: Any) -> None:
        counter.beacon += 1
        check_partial(*args)

    patched: list[tuple[Any, str, Any]] = [
        (identity, "Ed25519PublicKey", keys),
        (entries, "Ed25519PublicKey", keys),
        (parallel, "Ed25519PublicKey", keys),
        (beacon, "verify_partial", counted_partial),
        (parallel.SignatureBatch, "__init__", pooled_init),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]
    _clear_key_caches()
    for obj, name, value in patched:
        setattr(obj, name, value)
    try:
        yield counter
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        _clear_key_caches()


# -- results ---------------------------------------------------------------------------------------


@dataclass
class Row:
    system: str  # "ours, in-process" | "ours, gRPC processes" | "Flower 1.41 ..."
    n: int
    setting: str
    k: int
    t: int
    latencies: list[float] = field(default_factory=list)
    leader_bytes: float | None = None  # per round
    member_bytes: float | None = None  # per round, mean over non-leaders
    ed25519: float | None = None  # verifications per round, all members together
    beacon: float | None = None
    d: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95)) if self.latencies else float("nan")

    def cells(self) -> list[str]:
        def mb(x: float | None) -> str:
            return "-" if x is None else f"{x / 1e6:.{2 if x < 1e7 else 1}f}"

        floor = 8 * self.d
        member = mb(self.member_bytes)
        if self.member_bytes is not None and floor:
            member += f" ({self.member_bytes / floor:.1f}x)"
        ver = "-"
        if self.ed25519 is not None:
            ver = f"{self.ed25519:.0f} ({self.ed25519 / self.n:.0f} per member)"
        return [
            self.system,
            str(self.n),
            self.setting,
            f"{self.k} / {self.t}",
            str(len(self.latencies)),
            f"{self.median:.2f}",
            f"{self.p95:.2f}",
            member,
            mb(self.leader_bytes),
            ver,
            "-" if self.beacon is None else f"{self.beacon:.0f}",
        ]


COLUMNS = (
    "system",
    "n",
    "setting",
    "k / t",
    "rounds timed",
    "median s/round",
    "p95 s/round",
    "non-leader MB/round (x floor 8·d)",
    "leader MB/round",
    "Ed25519 verifications/round",
    "beacon partial checks/round",
)


def graph(n: int, corrupt_fraction: float | None, min_honest: int = 3) -> tuple[int, int]:
    """(k, t) of the SecAgg+ graph a round of n participants (all members) uses."""
    consortium = Consortium(n, quorum_for(n), min_honest, corrupt_fraction)
    p = make_params(b"\0" * 32, [f"m{i}" for i in range(n)], 1, 1.0, consortium)
    return p.k, p.threshold


def setting_name(corrupt_fraction: float | None) -> str:
    if corrupt_fraction is None:
        return "default (dishonest third)"
    return f"sparse, corrupt fraction {corrupt_fraction:g}"


def _run_config(args: argparse.Namespace, n: int, corrupt_fraction: float | None) -> RunConfig:
    return RunConfig(
        rounds=args.rounds,
        task=task_spec(args.d),
        seed=SEED,
        min_updates=n,
        collect_timeout=args.collect_timeout,
        round_timeout=args.round_timeout,
        secagg_corrupt_fraction=corrupt_fraction,
        started=int(time.time() * 1000),
    )


def timed_rounds(rounds: int) -> range:
    """Rounds whose time counts: round 1 also covers loading data (and Ray's actors)."""
    return range(2 if rounds > 1 else 1, rounds + 1)


# -- ours, in one process --------------------------------------------------------------------------


async def run_inprocess(
    root: Path, args: argparse.Namespace, n: int, corrupt_fraction: float | None
) -> Row:
    k, t = graph(n, corrupt_fraction)
    row = Row("ours, in-process", n, setting_name(corrupt_fraction), k, t, d=args.d)
    dirs = create_consortium(root, n, partition="iid", seed=SEED, consent=False)
    counter, verified = ByteCounter(), VerifyCounter()
    # Per member bytes and verifications as node 0 commits each round.
    snaps: dict[int, tuple[dict[str, int], int, int]] = {}
    with counting_verifications(verified):
        async with running_nodes(dirs, counter) as nodes:
            first: TimedNode = nodes[0]

            def snapshot(round_no: int) -> None:
                snaps[round_no] = (dict(counter.by_node), verified.ed25519, verified.beacon)

            first.on_commit = snapshot
            snapshot(0)
            run = _run_config(args, n, corrupt_fraction)
            row.notes += await run_to_end(nodes, run, args.run_timeout)
            records = run_records(first.ledger)
            if not records:
                row.notes.append("no round committed")
                return row
            row.notes += check_run(nodes, n)
            ids = [node.identity.node_id for node in nodes]
    leaders = {r.round: r.leader for r in records}
    timed = [r for r in timed_rounds(args.rounds) if r in first.committed and r - 1 in snaps]
    row.latencies = [first.committed[r] - first.begun[r] for r in timed]
    lead, others, ed, bls = [], [], [], []
    for r in timed:
        before, after = snaps[r - 1], snaps[r]
        delta = {i: after[0].get(i, 0) - before[0].get(i, 0) for i in ids}
        lead.append(delta[leaders[r]])
        others.append(statistics.mean(v for i, v in delta.items() if i != leaders[r]))
        ed.append(after[1] - before[1])
        bls.append(after[2] - before[2])
    if timed:
        row.leader_bytes, row.member_bytes = statistics.mean(lead), statistics.mean(others)
        row.ed25519, row.beacon = statistics.mean(ed), statistics.mean(bls)
    return row


# -- ours, node processes over gRPC ----------------------------------------------------------------


def _round_times(d: Path) -> tuple[int, list[int], bytes]:
    """(rounds committed, times of the run's round entries in ms, ledger root) of a folder."""
    with Ledger.open(d / LEDGER_FILE, readonly=True) as ledger:
        times = [e.time for e in ledger.iter_entries() if e.kind == ROUND_KIND]
        return len(run_records(ledger)), times, ledger.root()


def run_grpc(root: Path, args: argparse.Namespace, n: int) -> Row:
    k, t = graph(n, None)
    row = Row("ours, gRPC processes", n, setting_name(None), k, t, d=args.d)
    dirs = create_consortium(root, n, partition="iid", seed=SEED, consent=False)
    cluster = Cluster(dirs)
    try:
        cluster.start_all()
        cluster.wait_ready(args.run_timeout)
        report = asyncio.run(start_run(dirs[0], None, _run_config(args, n, None)))
        if not report["started"]:
            row.notes.append(f"run not agreed: {report}")
            return row
        deadline = time.monotonic() + args.run_timeout
        while not all(_round_times(d)[0] >= args.rounds for d in dirs):
            if time.monotonic() > deadline or not cluster.alive():
                row.notes.append(f"run unfinished after {args.run_timeout:g} s (--run-timeout)")
                break
            time.sleep(POLL)
    finally:
        cluster.stop_all()
    committed, times, _ = _round_times(dirs[0])
    with Ledger.open(dirs[0] / LEDGER_FILE, readonly=True) as ledger:
        failed = [(r.round, r.attempt) for r in run_records(ledger) if r.attempt > 0]
    if failed:
        row.notes.append(f"committed at a later attempt (round, attempt): {failed}")
    roots = {_round_times(d)[2] for d in dirs}
    if len(roots) != 1:
        row.notes.append("replicas disagree at the end of the run")
    row.latencies = [
        (times[r - 1] - times[r - 2]) / 1000.0 for r in timed_rounds(args.rounds) if r <= committed
    ]
    if timed_rounds(args.rounds).start == 1:
        row.notes.append("one round: no latency between round entries")
        row.latencies = []
    return row


# -- Flower -------------------------------------------------------------------------------------


def run_flower(args: argparse.Namespace, n: int, shares: int, threshold: int) -> Row | str:
    """Flower's SecAgg+ rounds at (num_shares, threshold), or why they were not measured."""
    python = Path(args.flower_python)
    if not python.exists():
        return (
            f"Flower skipped: no Python at {python} (create the venv: python3 -m venv "
            ".tmp/flwr-venv && .tmp/flwr-venv/bin/pip install 'flwr[simulation]==1.41.*' numpy)"
        )
    if not FLOWER_SCRIPT.exists():
        return f"Flower skipped: {FLOWER_SCRIPT} not found (run from a source checkout)"
    cmd = [
        str(python),
        str(FLOWER_SCRIPT),
        "secagg",
        *("--n", str(n), "--d", str(args.d), "--rounds", str(args.rounds)),
        *("--num-shares", str(shares), "--threshold", str(threshold)),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.flower_timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return f"Flower (shares {shares}, t {threshold}) timed out after {args.flower_timeout} s"
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return f"Flower (shares {shares}, t {threshold}) failed, rc {proc.returncode}: {tail}"
    result = json.loads(found[-1][len("RESULT ") :])
    rounds = [float(x) for x in result["round_s"]]
    row = Row(
        "Flower 1.41 SecAgg+, Ray simulation",
        n,
        f"num_shares {shares}, threshold {threshold}",
        shares - 1,
        threshold,
        latencies=rounds[1:] if len(rounds) > 1 else rounds,
        d=args.d,
    )
    if result.get("max_abs_err") is None:
        row.notes.append("no aggregate reached the strategy")
    return row


# -- the table -----------------------------------------------------------------------------------


def ratio_lines(rows: list[Row], compare_n: int) -> list[str]:
    ours = {r.setting: r for r in rows if r.system == "ours, in-process" and r.n == compare_n}
    flower = [r for r in rows if r.system.startswith("Flower") and r.latencies]
    out = []
    for f in flower:
        for o in ours.values():
            if o.latencies:
                out.append(
                    f"Flower ({f.setting}) / ours in-process ({o.setting}, k {o.k}, t {o.t}) "
                    f"at n = {compare_n}: median {f.median / o.median:.2f}x, "
                    f"p95 {f.p95 / o.p95:.2f}x"
                )
    return out


def commitment_floor(n: int, d: int, repeat: int = 3) -> tuple[float, float]:
    """(seconds of one contributor's commitment to a masked input of length d, the least wall
    time n of them take on this machine's cores): what any round of ours costs on one machine
    at least, measured in the same run (median of `repeat`; generators derived first)."""
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**32, size=d, dtype=np.uint64).astype(np.uint32)
    commitment.generators(d)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        commitment.commit_words(words)
        times.append(time.perf_counter() - t0)
    one = float(np.median(times))
    return one, n * one / (os.cpu_count() or 1)


def floor_lines(rows: list[Row], compare_n: int, d: int) -> list[str]:
    """The commitments' floor against the issue's target (ours 3x faster than Flower)."""
    one, least = commitment_floor(compare_n, d)
    lines = [
        f"floor: one contributor's commitment (an MSM of length {d}) takes {one:.3f} s here, "
        f"so the {compare_n} contributors' commitments of a round take at least {least:.2f} s "
        f"on this machine's {os.cpu_count()} cores, before any other work"
    ]
    for f in rows:
        if f.system.startswith("Flower") and f.latencies and f.n == compare_n:
            lines.append(
                f"3x faster than Flower ({f.setting}, {f.median:.2f} s) asks for "
                f"{f.median / 3:.2f} s per round: {least / (f.median / 3):.1f}x below that floor"
            )
    return lines


def markdown(rows: list[Row], notes: list[str], compare_n: int) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    ratios = ratio_lines(rows, compare_n)
    if ratios:
        lines += ["", "Ratios (Flower / ours, seconds per round; > 1: ours is faster):"]
        lines += [f"- {x}" for x in ratios]
    run_notes = [f"{r.system}, n = {r.n}, {r.setting}: {n}" for r in rows for n in r.notes]
    lines += ["", "Notes:", *[f"- {n}" for n in notes + run_notes]]
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="consortium bench round-e2e",
        description="Whole rounds (round machine, SecAgg+, cosigning, ledger, store; training "
        "replaced by a fixed vector) in one process and as gRPC processes, against Flower's "
        "SecAgg+ round in the same run.",
    )
    p.add_argument("--n", default="10,50,100", help="in-process member counts, comma-separated")
    p.add_argument("--d", type=int, default=100_000, help="vector length (model parameters)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (round 1 not timed)")
    p.add_argument(
        "--grpc-n", default="10,20", help="member counts as gRPC processes ('' for none)"
    )
    p.add_argument(
        "--compare-n",
        type=int,
        default=100,
        help="where to run our sparse setting and Flower (0: neither)",
    )
    p.add_argument(
        "--corrupt-fraction",
        type=float,
        default=0.02,
        help="the stated corrupt fraction of the sparse setting (secagg_corrupt_fraction)",
    )
    p.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run Flower's SecAgg+ round (benchmarks/flower_reference.py) at --compare-n",
    )
    p.add_argument(
        "--flower-python",
        default=os.environ.get("FLWR_PYTHON", str(FLOWER_PYTHON)),
        help="the Python of the separate Flower venv (default: $FLWR_PYTHON or "
        ".tmp/flwr-venv/bin/python in the source checkout)",
    )
    p.add_argument("--flower-timeout", type=int, default=1800, help="seconds per Flower run")
    p.add_argument("--collect-timeout", type=float, default=120.0)
    p.add_argument("--round-timeout", type=float, default=300.0)
    p.add_argument("--run-timeout", type=float, default=3600.0, help="give up on a run after this")
    p.add_argument(
        "--memory-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip an in-process size whose memory estimate (measured on transcript version 1, "
        "where every voter held every masked vector) exceeds the available memory",
    )
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args(argv)
    try:
        args.ns, args.grpc_ns = _ints(args.n), _ints(args.grpc_n)
    except ValueError:
        p.error("--n and --grpc-n are comma-separated whole numbers")
    if args.rounds < 1 or args.d < 1 or any(n < 4 for n in args.ns + args.grpc_ns):
        p.error("--rounds and --d must be at least 1, every n at least 4")
    if args.compare_n and args.compare_n < 4:
        p.error("--compare-n must be 0 or at least 4")
    if not 0 < args.corrupt_fraction < 1 / 3:
        p.error("--corrupt-fraction must be above 0 and below 1/3")
    return args


#: Memory an in-process run needs, as a multiple of n²·4d, measured on transcript version 1
#: (before the homomorphic commitments), where every voter held every masked vector (n²·4d
#: bytes in one process) and the copies its checks make; n = 100, d = 10^5 was OOM-killed at
#: 17.5 GB resident (4.4·n²·4d), still growing.
MEMORY_FACTOR = 8


def memory_refusal(n: int, d: int) -> str | None:
    """Why an in-process run of n members would not fit in this machine's available memory."""
    need = MEMORY_FACTOR * n * n * 4 * d
    try:
        with open("/proc/meminfo") as fh:
            info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in fh}
    except (OSError, ValueError, IndexError):
        return None
    have = info.get("MemAvailable")
    if have is None or need <= have:
        return None
    return (
        f"skipped: may need about {need / 2**30:.0f} GiB ({MEMORY_FACTOR}·n²·4d: every voter "
        f"holds every masked vector), {have / 2**30:.0f} GiB available"
    )


def _peak_rss() -> str:
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min) / {five:.1f} (5 min)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = " ".join(["consortium bench round-e2e", *words])
    rows: list[Row] = []
    loads: list[str] = []
    started = time.perf_counter()
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    c = args.corrupt_fraction
    plan: list[tuple[str, int, float | None]] = [("inprocess", n, None) for n in args.ns]
    if args.compare_n:
        if args.compare_n not in args.ns:
            plan.append(("inprocess", args.compare_n, None))
        plan.append(("inprocess", args.compare_n, c))
    plan += [("grpc", n, None) for n in args.grpc_ns]
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-round-e2e-") as tmpname:
        tmp = Path(tmpname)
        for i, (kind, n, fraction) in enumerate(plan):
            root = tmp / f"{kind}-{n}-{i}"
            loads.append(f"{kind} n={n}: {_load()}")
            t0 = time.perf_counter()
            check = kind == "inprocess" and args.memory_check
            refusal = memory_refusal(n, args.d) if check else None
            if refusal:
                skipped.append(f"in-process n = {n}: {refusal}")
                say(skipped[-1])
                continue
            try:
                if kind == "inprocess":
                    row = asyncio.run(run_inprocess(root, args, n, fraction))
                else:
                    row = run_grpc(root, args, n)
            except ConsortiumError as exc:
                skipped.append(f"{kind} n = {n}: {exc}")
                say(skipped[-1])
                continue
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if kind == "inprocess":
                row.notes.append(f"peak resident memory of the bench so far {_peak_rss()}")
            rows.append(row)
            say(f"{' | '.join(row.cells())} ({time.perf_counter() - t0:.0f} s)")
    if args.compare_n and args.flower:
        k, t = graph(args.compare_n, c)
        for shares, threshold in dict.fromkeys([(k + 1, t), FLOWER_REFERENCE]):
            loads.append(f"Flower shares {shares}: {_load()}")
            t0 = time.perf_counter()
            got = run_flower(args, args.compare_n, min(shares, args.compare_n), threshold)
            if isinstance(got, str):
                skipped.append(got)
                say(got)
                if "skipped" in got:
                    break
                continue
            rows.append(got)
            say(f"{' | '.join(got.cells())} ({time.perf_counter() - t0:.0f} s)")
    elif args.compare_n:
        skipped.append("Flower not run (--no-flower)")
    notes = [
        f"`{command}`; d = {args.d}; {args.rounds} rounds per run, rounds "
        f"{timed_rounds(args.rounds).start}..{args.rounds} timed; training: a fixed vector "
        "per member (task consortium.bench.fixed_task)",
        "ours: every member's update is required (min_updates = n); genesis quorum ⌈2n/3⌉; "
        "MB are request + reply payloads a member sent and received; Ed25519 verifications "
        "and beacon partial checks of all members together (in-process runs only)",
        f"machine: {os.cpu_count()} CPUs; load average before each run: " + "; ".join(loads),
        *skipped,
        *(floor_lines(rows, args.compare_n, args.d) if args.compare_n else []),
        f"total wall time {time.perf_counter() - started:.0f} s",
    ]
    table = markdown(rows, notes, args.compare_n)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
