"""Chaos run: node processes over gRPC train with SecAgg+ while a seeded scheduler kills them.

    consortium bench chaos [--nodes 7] [--rounds 30] [--kills 4] [--seed 0]
        [--collect-timeout 3] [--round-timeout 10] [--deadline 600] [--keep DIR] [--out FILE.md]

N members (`consortium node start` processes, mutual TLS on 127.0.0.1, started as `consortium
demo` and the e2e test start them) agree on a run of digits (IID shards, MLP, SecAgg+) and train
it. A scheduler seeded by `--seed` meanwhile repeats, `--kills` times (the kinds are a seeded
shuffle of half leaders, half others):

1. wait until the run has gone on `gap` more rounds (0 or 1, drawn) since the last restart;
2. SIGKILL, as a round commits, either the member scheduled to lead the next round (attempt 0),
   or another member (drawn);
3. wait until the others commit `down` more rounds without it (1 or 2, drawn);
4. restart it, and wait until it has caught up (its ledger as long as every other's) and
   rejoined (a round record lists it as a participant) before the next kill.

So at most one member is ever down, below what a round tolerates: n minus the SecAgg+ floor
max(quorum, f + min_honest), 2 at n = 7 (the script refuses a consortium that tolerates none).

A leader is killed only before any member can have signed a survivor set of its round: the
scheduler freezes it (SIGSTOP), reads its folder, and kills it if it has not yet signed one (a
leader signs its own copy before the set leaves it), else lets it go on (SIGCONT) and tries at
the next round. So every leader kill is a failover the tables attribute: a leader lost after a
quorum cosigned its proposal would have that very entry re-proposed at attempt 0. (A leader lost
after its members signed its set no longer stalls the round: they may leave out a leader of an
attempt in which they signed, rule one-sum-per-update in `protocol/round.py`; tested in
`tests/test_secure_rounds.py` and `tests/test_e2e_grpc.py`.) Other members are killed whenever
they are drawn.

Kills stop when no round would remain to be committed without the victim. At the end every
member must hold the whole run; the processes are stopped, every folder is audited
(`consortium.audit.audit`: signatures, Merkle root, cosigned heads, every artifact and secure sum)
and all roots must be equal. Exit status 1 otherwise.

Measured on one machine (entry times are the leaders' clocks, here one clock): rounds per minute
from the run-config entry's time to the last round entry's; failovers = round records with
attempt > 0, and whether that round's attempt-0 leader was a killed member, or one restarted
that had not rejoined yet (the others sent it their updates while it was down and do not send
them again); per kill, the seconds from the restart (a fresh Python process: imports, keys,
ledger) until the member caught up, and until it rejoined. Every wait is for a condition,
bounded by `--deadline` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consortium.audit import audit
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning import build_model, evaluate, load_dataset, set_weights
from consortium.learning.serialize import weights_from_bytes
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium, member_shares, scheduled_leader
from consortium.protocol.record import ROUND_KIND, RUN_KIND, RoundRecord, run_records
from consortium.protocol.schedule import leader_for
from consortium.protocol.secure_round import Consortium
from consortium.protocol.verifier import record_beacon
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes

POLL = 0.25  # seconds between looks at the folders while nothing is about to happen
HUNT = 0.02  # ... while waiting for a commit to kill at (reading a ledger takes ~4 ms)


class ChaosError(ConsortiumError):
    """The run did not survive: a condition was not met in time, or replicas disagree."""


@dataclass
class Kill:
    victim: int  # index of the member (folder nodeI)
    targeted: str  # "leader": scheduled to lead the next round; "member": any other
    had: int  # rounds it had committed when killed
    at: int  # rounds the most advanced member had committed then
    down_rounds: int = 0  # rounds the others committed while it was down
    led: list[tuple[int, int]] = field(default_factory=list)  # (round, attempt) it was to lead
    #: rounds it was to lead after its restart, up to the one it rejoined in: the others had
    #: sent it their updates while it was down and do not send them again, so these fail over
    led_back: list[tuple[int, int]] = field(default_factory=list)
    back_at: int = 0  # rounds the others had committed at its restart
    catch_up: float = 0.0  # restart -> its ledger as long as every other member's
    rejoin: float | None = None  # restart -> a round record lists it (None: run ended first)


@dataclass
class Report:
    nodes: int
    rounds: int
    seed: int
    tolerated: int  # members a round can lose: n minus the SecAgg+ floor
    kills: list[Kill] = field(default_factory=list)
    spared: int = 0  # leaders found past signing their survivor set: let go on (see above)
    failovers: list[tuple[int, int]] = field(default_factory=list)  # (round, attempt > 0)
    run_seconds: float = 0.0  # run-config entry -> last round entry (entry times)
    wall: float = 0.0  # the whole benchmark, process starts and audits included
    roots: set[str] = field(default_factory=set)
    audited: int = 0  # folders that audited clean
    entries: int = 0
    accuracy: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rounds_per_minute(self) -> float:
        return 60.0 * self.rounds / self.run_seconds if self.run_seconds else 0.0


# -- reading the folders (the nodes write them; SQLite's WAL lets us read meanwhile) -------------


def _size(d: Path) -> int:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return ledger.size


def _state(d: Path) -> tuple[int, int, bytes]:
    """(ledger size, rounds committed, root), read at one moment."""
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return ledger.size, len(run_records(ledger)), ledger.root()


def _records(d: Path) -> list[RoundRecord]:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return run_records(ledger)


def _grown(d: Path, size: int) -> Callable[[], bool]:
    return lambda: _size(d) > size


def _signed_at(d: Path, slot: int) -> bool:
    """Whether the member signed a survivor set for the round whose record takes `slot`."""
    with Ledger.open(d / LEDGER_FILE) as ledger:
        return any(row[0] == slot for row in ledger.my_secagg())


def _first_leaders(d: Path, members: list[str]) -> dict[int, str]:
    """round -> its attempt-0 leader, from the beacon each record proves."""
    with Ledger.open(d / LEDGER_FILE) as ledger:
        genesis = ledger.genesis()
        return {
            r.round: leader_for(record_beacon(r, genesis), r.round, 0, members)
            for r in run_records(ledger)
        }


def _run_seconds(d: Path) -> float:
    with Ledger.open(d / LEDGER_FILE) as ledger:
        times = [(e.kind, e.time) for e in ledger.iter_entries()]
    start = max(t for kind, t in times if kind == RUN_KIND)
    end = max(t for kind, t in times if kind == ROUND_KIND)
    return (end - start) / 1000.0


def _accuracy(d: Path, record: RoundRecord) -> float:
    ds = load_dataset("digits")
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    blob = get_bytes(BlockStore(d / STORE_DIR), record.model)
    set_weights(model, weights_from_bytes(blob))
    return evaluate(model, ds.x_test, ds.y_test)[1]


class Chaos:
    """The cluster, the seeded scheduler and the conditions it waits on."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.dirs = create_consortium(root, args.nodes, partition="iid", seed=args.seed)
        genesis = Genesis.load(self.dirs[0] / GENESIS_FILE)
        self.genesis = genesis
        self.members = sorted(m.node_id for m in genesis.members)  # the schedule's order
        self.shares = member_shares(self.dirs, genesis)
        self.run_id = ""
        self.ids = [genesis.member_by_name(d.name).node_id for d in self.dirs]
        floor = Consortium(args.nodes, genesis.quorum, RunConfig().min_honest).floor
        self.report = Report(args.nodes, args.rounds, args.seed, args.nodes - floor)
        if self.report.tolerated < 1:
            raise ChaosError(
                f"a SecAgg+ round at n = {args.nodes} tolerates no member down (floor {floor}): "
                "use at least 5 nodes"
            )
        # Nodes serve on after the run, so a member restarted near the end still catches up.
        self.cluster = Cluster(self.dirs, exit_when_finished=False)

    # -- waiting on conditions -------------------------------------------------------------------

    def wait(self, cond: Callable[[], bool], what: str, poll: float = POLL) -> None:
        end = time.monotonic() + self.args.deadline
        while not cond():
            if time.monotonic() > end:
                raise ChaosError(f"gave up after {self.args.deadline:.0f} s waiting for {what}")
            time.sleep(poll)

    def logs(self) -> str:
        alive = self.cluster.alive()
        return "\n".join(
            f"--- {d.name} (alive: {i in alive}):\n"
            + (d / "node.log").read_text(errors="replace")[-1500:]
            for i, d in enumerate(self.dirs)
            if (d / "node.log").exists()
        )

    def committed(self, exclude: int | None = None) -> int:
        """Rounds committed by the most advanced member (other than `exclude`)."""
        return max(_state(d)[1] for i, d in enumerate(self.dirs) if i != exclude)

    def reached(self, rounds: int) -> Callable[[], bool]:
        return lambda: self.committed() >= rounds

    def reference(self, exclude: int | None = None) -> int:
        """The member (other than `exclude`) with the longest ledger."""
        others = [i for i in range(len(self.dirs)) if i != exclude]
        return max(others, key=lambda i: _size(self.dirs[i]))

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Report:
        args, report = self.args, self.report
        started = time.monotonic()
        self.cluster.start_all()
        self.cluster.wait_ready(args.deadline)
        run = RunConfig(
            rounds=args.rounds,
            lr=0.1,
            collect_timeout=args.collect_timeout,
            round_timeout=args.round_timeout,
            started=int(time.time() * 1000),
        )
        agreed = asyncio.run(start_run(self.dirs[0], None, run))
        if not agreed["started"]:
            raise ChaosError(f"the run was not agreed: {agreed}")
        self.run_id = str(agreed["run"])  # the agreed config's id (the task's hash pinned)
        kinds = ["leader"] * ((args.kills + 1) // 2) + ["member"] * (args.kills // 2)
        self.rng.shuffle(kinds)
        for kind in kinds:
            gap, down = self.rng.randint(0, 1), self.rng.randint(1, 2)
            after = min(self.committed() + gap, args.rounds)
            self.wait(self.reached(after), f"round {after}")
            kill = self.kill_at_next_commit(kind, down)
            if kill is None:
                left = len(kinds) - len(report.kills)
                report.notes.append(
                    f"{left} kill(s) left out: no round would remain to commit without the "
                    "victim (raise --rounds)"
                )
                break
            self.restart(kill, down)
        n = args.rounds
        self.wait(lambda: all(_state(d)[1] >= n for d in self.dirs), "every member to hold the run")
        self.cluster.stop_all()
        self.finish(started)
        return report

    def kill_at_next_commit(self, kind: str, down: int) -> Kill | None:
        """SIGKILL a member as the next round commits (see the module docstring); None if no
        round would remain to commit without it."""
        while True:
            ref = self.dirs[self.reference()]
            seen = _size(ref)
            if _state(ref)[1] + 1 + down > self.args.rounds:
                return None
            self.wait(_grown(ref, seen), f"{ref.name} to commit", HUNT)
            _, committed, _ = _state(ref)
            if committed + down > self.args.rounds:
                return None
            leader = scheduled_leader(self.genesis, self.shares, self.run_id, committed + 1)
            first = self.ids.index(leader)
            if kind == "member":
                victim = self.rng.choice([i for i in range(len(self.dirs)) if i != first])
                had = _state(self.dirs[victim])[1]
                self.cluster.kill(victim)  # SIGKILL: no chance to flush or say goodbye
                return self._killed(victim, kind, had, committed)
            proc = self.cluster.procs[first]
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: its folder shows what it has done
            size, had, _ = _state(self.dirs[first])
            if had < committed or not _signed_at(self.dirs[first], size):
                self.cluster.kill(first)
                return self._killed(first, kind, had, committed)
            os.kill(proc.pid, signal.SIGCONT)  # its set may be signed: not a clean failover
            self.report.spared += 1
            self.say(f"spared node{first}, leader of round {committed + 1}: its set is signed")

    def _killed(self, victim: int, kind: str, had: int, at: int) -> Kill:
        kill = Kill(victim, kind, had, at)
        self.report.kills.append(kill)
        self.say(f"killed node{victim} ({kind}) after round {at}; it had committed {had}")
        return kill

    def say(self, text: str) -> None:
        """Progress on stderr (the tables go to stdout)."""
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    def restart(self, kill: Kill, down: int) -> None:
        victim, name = kill.victim, self.dirs[kill.victim].name
        target = kill.at + down
        self.wait(
            lambda: self.committed(exclude=victim) >= target,
            f"round {target} without {name}",
        )
        before = kill.back_at = self.committed(exclude=victim)
        kill.down_rounds = before - kill.had
        self.cluster.start(victim)
        restarted = time.monotonic()
        self.say(f"restarted {name}; the others have committed {before} rounds")
        others = [d for i, d in enumerate(self.dirs) if i != victim]
        self.wait(
            lambda: _size(self.dirs[victim]) >= max(_size(d) for d in others),
            f"{name} to catch up",
        )
        kill.catch_up = time.monotonic() - restarted
        rounds, me = self.args.rounds, self.ids[victim]

        def back() -> bool:  # a round committed after the restart lists it
            return any(me in r.participants for r in self._records_after(before, victim))

        self.wait(lambda: back() or self.committed() >= rounds, f"{name} to rejoin a round")
        if back():
            kill.rejoin = time.monotonic() - restarted
        self.say(f"{name} caught up in {kill.catch_up:.1f} s, rejoined: {kill.rejoin}")

    def _records_after(self, rounds: int, victim: int) -> list[RoundRecord]:
        return _records(self.dirs[self.reference(exclude=victim)])[rounds:]

    def finish(self, started: float) -> None:
        report = self.report
        audits = [audit(d) for d in self.dirs]  # raises AuditError naming the first problem
        report.audited = len(audits)
        report.roots = {a.root.hex() for a in audits}
        report.entries = audits[0].entries
        records = _records(self.dirs[0])
        report.failovers = [(r.round, r.attempt) for r in records if r.attempt > 0]
        first = _first_leaders(self.dirs[0], self.members)
        for k in report.kills:
            missed = records[k.had : k.had + k.down_rounds]
            me = self.ids[k.victim]
            k.led = [(r.round, r.attempt) for r in missed if first[r.round] == me]
            for r in records[k.back_at :]:  # up to the round it rejoined in
                if first[r.round] == me:
                    k.led_back.append((r.round, r.attempt))
                if me in r.participants:
                    break
        report.run_seconds = _run_seconds(self.dirs[0])
        report.accuracy = _accuracy(self.dirs[0], records[-1])
        report.wall = time.monotonic() - started
        if len(report.roots) != 1:
            raise ChaosError(f"replicas disagree: {len(report.roots)} roots")
        if report.entries != report.rounds + 2 or len(records) != report.rounds:
            raise ChaosError(f"{report.entries} entries for {report.rounds} rounds")


def chaos(root: Path, args: argparse.Namespace) -> Report:
    """Run the chaos benchmark in member folders under `root`; its report, or ChaosError (with
    every node's log tail) / AuditError."""
    c = Chaos(root, args)
    try:
        return c.run()
    except ChaosError as exc:
        raise ChaosError(f"{exc}\n{c.logs()}") from None
    finally:
        c.cluster.stop_all()


def _stat(xs: list[float]) -> str:
    if not xs:
        return "none"
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}"


def markdown(r: Report, command: str) -> str:
    led = [k for k in r.kills if k.led]
    caused = sum(1 for k in r.kills for _, a in k.led + k.led_back if a > 0)
    lines = [
        "| nodes | rounds | kills (scheduled leaders among them) | down at once (tolerated) "
        "| failovers: records with attempt > 0 (of a killed or restarting leader) "
        "| rounds per minute "
        "| catch-up median / max (s) | rejoin median / max (s) | replicas |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {r.nodes} | {r.rounds} | {len(r.kills)} ({len(led)}) | 1 ({r.tolerated}) "
        f"| {len(r.failovers)} ({caused}) | {r.rounds_per_minute:.1f} "
        f"| {_stat([k.catch_up for k in r.kills])} "
        f"| {_stat([k.rejoin for k in r.kills if k.rejoin is not None])} "
        f"| {len(r.roots)} root, {r.audited}/{r.nodes} audits clean |",
        "",
        "| kill | victim | targeted | killed in round | rounds committed while down "
        "| it was to lead (round, attempt committed) | ... once restarted, until it rejoined "
        "| catch-up (s) | rejoin (s) |",
        "|---:|---|---|---:|---:|---|---|---:|---:|",
    ]
    for i, k in enumerate(r.kills, 1):
        rejoin = f"{k.rejoin:.1f}" if k.rejoin is not None else "run over"
        led_text = "; ".join(f"{n}, {a}" for n, a in k.led) or "none"
        back_text = "; ".join(f"{n}, {a}" for n, a in k.led_back) or "none"
        lines.append(
            f"| {i} | node{k.victim} | {k.targeted} | {k.had + 1} | {k.down_rounds} "
            f"| {led_text} | {back_text} | {k.catch_up:.1f} | {rejoin} |"
        )
    failovers = ", ".join(f"round {n} attempt {a}" for n, a in r.failovers) or "none"
    notes = [
        f"`{command}`; seed {r.seed}; digits, IID shards, MLP, SecAgg+; {r.entries} ledger "
        f"entries; final accuracy {r.accuracy:.3f}",
        f"failovers: {failovers}",
        f"run {r.run_seconds:.0f} s (run-config entry to last round entry); whole benchmark "
        f"{r.wall:.0f} s with process starts and {r.audited} audits",
        "catch-up and rejoin are measured from the restart, so they include starting a Python "
        "process (imports, keys, ledger) on the shared cores",
        f"leaders spared (found past signing their survivor set, so left to go on): {r.spared}",
        *r.notes,
    ]
    lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="consortium bench chaos",
        description="Kill and restart node processes during a SecAgg+ run; measure liveness.",
    )
    p.add_argument("--nodes", type=int, default=7, help="member processes (at least 5)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--kills", type=int, default=4, help="SIGKILLs, half of them of leaders")
    p.add_argument("--seed", type=int, default=0, help="seeds the scheduler and the consortium")
    p.add_argument("--collect-timeout", type=float, default=3.0)
    p.add_argument("--round-timeout", type=float, default=10.0)
    p.add_argument(
        "--deadline", type=float, default=600.0, help="seconds any one condition may take"
    )
    p.add_argument("--keep", type=Path, help="create the member folders here and keep them")
    p.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = p.parse_args(argv)
    if args.rounds < 2 or args.kills < 0:
        p.error("--rounds must be at least 2, --kills at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = " ".join(["consortium bench chaos", *words])
    tmp = None if args.keep else Path(tempfile.mkdtemp(prefix="bench-chaos-"))
    root = args.keep or tmp
    assert root is not None
    try:
        report = chaos(root, args)
    except ConsortiumError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    table = markdown(report, command)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
