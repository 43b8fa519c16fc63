"""`consortium simulate`: a whole consortium's rounds on this machine (or a Ray cluster)."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from consortium.cli.common import console, handle_errors
from consortium.core.errors import ConfigError
from consortium.core.genesis import quorum_for
from consortium.node.simulate import Backend, InProcessBackend, SimResult, SimSettings
from consortium.protocol.committee import committee_unsafe_probability

HELP = """Simulate a consortium: MEMBERS real nodes run ROUNDS rounds of the same round machine as
`consortium node start` (beacon, leader, SecAgg+, every member's checks and cosignatures, ledger
and store in a folder per member), with training replaced by a fixed vector of length D.

Backends: `inprocess` (the default) runs every node on one asyncio loop in this process;
`ray` spreads them over Ray actors, many members per actor, one actor per core (`--actors`),
starting a local Ray and shutting it down at the end, or joining a running cluster with
`--address` (the member folders must then be on a filesystem every node of the cluster sees).
Messages between members on different actors go through Ray; every byte is counted.

It prints members per second (members whose update entered a round, per second of a warm
round), rounds per hour, the peak memory of the driver and the actors (the sum of each
process's peak RSS), bytes per member and round, and, for --per-round K below MEMBERS, the
probability that a committee of K drawn from MEMBERS with the assumed corrupt fraction holds
more than a third dishonest members (hypergeometric tail; with every member contributing, the
same figure for the whole consortium, 0 while the assumed dishonest are fewer than a third).

The genesis ceremony (the beacon group deals the beacon key: its part of the manifest grows as
the group's size squared, 3 MB for a group of 100) is part of the set-up and timed apart. Above
100 members the beacon group defaults to 64 members (`--beacon-group`), so neither the ceremony
nor each round's beacon partials grow with MEMBERS; the beacon is then unpredictable while at
most a third of the group is dishonest, and the command prints the chance that a group drawn
with the assumed corrupt fraction breaks that (docs/architecture.md, "The beacon group")."""

#: `--beacon-group` above this many members when not given.
AUTO_GROUP_ABOVE = 100
AUTO_GROUP = 64


def _mb(x: float) -> str:
    if x != x:  # nan: nothing measured
        return "-"
    return f"{x / 1e6:,.1f} MB" if x >= 1e6 else f"{x / 1e3:,.1f} kB"


def committee_lines(
    members: int, per_round: int, corrupt: float, beacon_group: int = 0
) -> list[str]:
    """What the committee (and beacon group) assumption means for (N, K, f), in words."""
    bad = math.floor(corrupt * members)
    lines = [f"assumed corrupt fraction f = {corrupt:g}: {bad} of {members} members dishonest"]
    for what, k in (("a committee", per_round), ("the beacon group", beacon_group)):
        if what == "the beacon group" and not 0 < k < members:
            continue
        limit = (k - 1) // 3
        p = committee_unsafe_probability(members, k, bad)
        bits = "" if p <= 0 else f" (2^{math.log2(p):.1f})"
        lines.append(f"P[{what} of {k} holds more than {limit} dishonest] = {p:.3g}{bits}")
    return lines


def print_result(r: SimResult) -> None:
    s = r.settings
    table = Table(title=f"consortium simulate --backend {s.backend}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("members", f"{s.members}"),
        ("per round", f"{s.per_round or s.members}"),
        ("beacon group", f"{s.beacon_group or s.members}"),
        ("hosts (actors)", f"{len(r.hosts)}"),
        ("d (fixed-vector task)", f"{s.d}"),
        ("rounds committed", f"{r.rounds_done} of {s.rounds}"),
        ("genesis ceremony", f"{r.setup_s:.1f} s"),
        ("nodes started", f"{r.start_s:.1f} s"),
        ("run (agreement + rounds)", f"{r.run_s:.1f} s"),
        ("median round (member 0, round 1 left out)", f"{r.round_s:.2f} s"),
        ("members / s", f"{r.members_per_s:.1f}"),
        ("rounds / hour", f"{r.rounds_per_hour:,.0f}"),
        ("peak memory (driver + actors, sum of peak RSS)", _mb(r.peak_memory)),
        ("bytes per member and round", _mb(r.bytes_per_member_round)),
    ]
    if s.backend == "ray":
        rows.append(("bytes between actors (whole run)", _mb(r.remote_bytes)))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}")


@handle_errors
def simulate(
    members: Annotated[int, typer.Option("--members", "-n", help="members (nodes)", min=1)] = 5,
    per_round: Annotated[
        int | None,
        typer.Option(
            "--per-round",
            help="contributors per round (default: every member); below --members, each "
            "round's contributors (and leaders) are a committee of K drawn from its beacon, "
            "SecAgg+ runs among them and every member still checks and cosigns; needs "
            "--corrupt-fraction (docs/architecture.md, 'Committees')",
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(help="rounds to run", min=1)] = 3,
    d: Annotated[int, typer.Option("--d", help="length of the fixed vector", min=1)] = 100,
    backend: Annotated[str, typer.Option(help="inprocess | ray")] = "inprocess",
    actors: Annotated[
        int, typer.Option(help="Ray: actors, each hosting many members (0: one per core)", min=0)
    ] = 0,
    address: Annotated[
        str | None, typer.Option(help="Ray: join the cluster at this address (e.g. auto)")
    ] = None,
    corrupt_fraction: Annotated[
        float | None,
        typer.Option(
            help="the corrupt fraction the simulation assumes (below 1/3): sizes a sparse "
            "SecAgg+ graph (needed above 300 members) and the committee's safety figure; "
            "default: a dishonest third, the complete graph"
        ),
    ] = None,
    beacon_group: Annotated[
        int | None,
        typer.Option(
            "--beacon-group",
            help="members who run the beacon's DKG and make each round's beacon (the genesis "
            f"manifest names them); default every member up to {AUTO_GROUP_ABOVE} members, "
            f"{AUTO_GROUP} above; 0: every member",
            min=0,
        ),
    ] = None,
    round_timeout: Annotated[float, typer.Option(help="seconds before an attempt fails over")] = (
        600.0
    ),
    run_timeout: Annotated[float, typer.Option(help="seconds before giving up the run")] = 3600.0,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="keep the member folders here (default: a temporary folder)"),
    ] = None,
) -> None:
    if backend not in ("inprocess", "ray"):
        raise ConfigError(f"--backend must be inprocess or ray, not {backend!r}")
    if address and backend != "ray":
        raise ConfigError("--address joins a Ray cluster: use it with --backend ray")
    if corrupt_fraction is not None and not 0 <= corrupt_fraction < 1 / 3:
        raise ConfigError("--corrupt-fraction must be at least 0 and below 1/3")
    if members < 3:
        raise ConfigError("--members must be at least 3 (SecAgg+ needs 3 contributors)")
    k = per_round if per_round is not None else members
    if not 1 <= k <= members:
        raise ConfigError(f"--per-round must be between 1 and --members ({members})")
    group = beacon_group
    if group is None:
        group = AUTO_GROUP if members > AUTO_GROUP_ABOVE else 0
    if 0 < group < 4 or group > members:
        raise ConfigError(f"--beacon-group must be 0 or between 4 and --members ({members})")
    if group == members:
        group = 0
    for line in committee_lines(members, k, corrupt_fraction or 1 / 3, group):
        console.print(line, markup=False)  # "P[...]" is not markup
    if k < members and corrupt_fraction is None:
        raise ConfigError(
            f"--per-round {k} below --members {members} draws committees: state the corrupt "
            "fraction their safety rests on with --corrupt-fraction (e.g. 0.1)"
        )
    if k < 4 < members:
        raise ConfigError(f"--per-round {k}: a committee needs at least 4 members")
    if members > 300 and corrupt_fraction is None:
        raise ConfigError(
            "above 300 members SecAgg+ needs a stated --corrupt-fraction (a sparse graph)"
        )
    n_actors = actors or os.cpu_count() or 1
    settings = SimSettings(
        members=members,
        rounds=rounds,
        d=d,
        per_round=k,
        backend=backend,
        actors=n_actors if backend == "ray" else 1,
        address=address,
        corrupt_fraction=corrupt_fraction,
        beacon_group=group,
        collect_timeout=round_timeout / 4,
        round_timeout=round_timeout,
        run_timeout=run_timeout,
    )
    quorum = quorum_for(members)
    console.print(
        f"{members} members (quorum {quorum}, up to {(members - 1) // 3} dishonest tolerated), "
        f"{rounds} rounds, d = {d}, backend {backend}"
        + (f", {n_actors} actors" if backend == "ray" else "")
    )
    if k < members:
        console.print(
            f"committees: each round's {k} contributors (and its leaders) drawn from its "
            f"beacon; SecAgg+ among them; all {members} members check and cosign"
        )
    if group:
        console.print(
            f"beacon group: {group} of the {members} members deal the beacon key and make each "
            f"round's beacon ({(group - 1) // 3 + 1} partials)"
        )
    root = directory or Path(tempfile.mkdtemp(prefix="consortium-sim-"))
    try:
        result = _run(settings, root)
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)
    print_result(result)
    if result.rounds_done < rounds:
        raise typer.Exit(1)


def _backend(s: SimSettings) -> Backend:
    if s.backend == "ray":
        from consortium.node.ray_host import RayBackend  # Ray only when asked for

        return RayBackend(s.actors, s.address)
    return InProcessBackend()


def _run(s: SimSettings, root: Path) -> SimResult:
    from consortium.node.simulate import simulate_async

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        return asyncio.run(simulate_async(s, root, _backend(s), progress))
