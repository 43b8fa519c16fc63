"""`consortium simulate`: the in-process backend end to end, its refusals, committee figures;
the Ray backend (slow) with two actors, leaving no Ray process behind."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.node.simulate import InProcessBackend, SimSettings, simulate_async
from consortium.protocol.committee import committee_for, committee_unsafe_probability
from consortium.protocol.record import run_records

runner = CliRunner()


def test_simulate_in_process_runs_every_round_through_the_cli(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["simulate", "--members", "4", "--rounds", "2", "--d", "8", "--dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert "2 of 2" in res.output  # rounds committed
    assert "members / s" in res.output and "rounds / hour" in res.output
    # Real member folders: each ledger holds the run's two round records, the same on all.
    dirs = sorted(p for p in tmp_path.iterdir() if (p / GENESIS_FILE).exists())
    assert len(dirs) == 4
    assert len(Genesis.load(dirs[0] / GENESIS_FILE).members) == 4


def test_simulate_async_reports_bytes_rounds_and_one_ledger(tmp_path: Path) -> None:
    s = SimSettings(members=4, rounds=2, d=4)
    result = asyncio.run(simulate_async(s, tmp_path, InProcessBackend()))
    assert result.rounds_done == 2 and not result.notes
    assert len({root for h in result.hosts for root in h.roots}) == 1
    assert result.bytes_per_member_round > 0
    assert sorted(result.latencies) == [1, 2]
    from consortium.ledger.log import Ledger

    with Ledger.open(tmp_path / "node0" / "ledger.sqlite", readonly=True) as ledger:
        records = run_records(ledger)
    assert [r.round for r in records] == [1, 2]
    assert all(len(r.participants) == 4 for r in records)


def test_simulate_with_committees_records_the_beacons_committee(tmp_path: Path) -> None:
    from consortium.ledger.log import Ledger
    from consortium.protocol.verifier import record_beacon

    s = SimSettings(members=7, rounds=2, d=4, per_round=4, corrupt_fraction=0.1)
    result = asyncio.run(simulate_async(s, tmp_path, InProcessBackend()))
    assert result.rounds_done == 2 and not result.notes, result.notes
    assert len({root for h in result.hosts for root in h.roots}) == 1
    genesis = Genesis.load(tmp_path / "node0" / GENESIS_FILE)
    members = sorted(m.node_id for m in genesis.members)
    with Ledger.open(tmp_path / "node0" / "ledger.sqlite", readonly=True) as ledger:
        records = run_records(ledger)
    for r in records:
        committee = committee_for(record_beacon(r, genesis), members, 4)
        assert r.committee == 4 and list(r.participants) == committee and r.dropouts == ()
    res = runner.invoke(app, ["audit", str(tmp_path / "node3")])
    assert res.exit_code == 0, res.output


def test_simulate_with_a_beacon_group_audits(tmp_path: Path) -> None:
    """Four of seven members make every beacon; the records carry only their partials, and an
    outside audit of a member outside the group accepts the run."""
    from consortium.ledger.log import Ledger

    s = SimSettings(members=7, rounds=2, d=4, per_round=4, corrupt_fraction=0.1, beacon_group=4)
    result = asyncio.run(simulate_async(s, tmp_path, InProcessBackend()))
    assert result.rounds_done == 2 and not result.notes, result.notes
    genesis = Genesis.load(tmp_path / "node0" / GENESIS_FILE)
    group = set(genesis.beacon_ids())
    assert len(group) == 4 and sorted(genesis.dealings) == sorted(group)
    outsider = next(m for m in genesis.members if m.node_id not in group)
    with Ledger.open(tmp_path / outsider.name / "ledger.sqlite", readonly=True) as ledger:
        records = run_records(ledger)
    assert [r.round for r in records] == [1, 2]
    assert all({p.member for p in r.beacon} <= group for r in records)
    res = runner.invoke(app, ["audit", str(tmp_path / outsider.name)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--members", "10", "--beacon-group", "3"], "--beacon-group must be 0 or between 4"),
        (["--members", "10", "--beacon-group", "11"], "--beacon-group must be 0 or between 4"),
        (["--backend", "mpi"], "--backend must be inprocess or ray"),
        (["--address", "auto"], "use it with --backend ray"),
        (["--members", "2"], "at least 3"),
        (["--members", "400"], "--corrupt-fraction"),
        (["--corrupt-fraction", "0.4"], "below 1/3"),
        (["--members", "10", "--per-round", "4"], "state the corrupt fraction"),
        (["--members", "10", "--per-round", "3", "--corrupt-fraction", "0.1"], "at least 4"),
    ],
)
def test_simulate_refuses_a_mistake_in_one_line(args: list[str], message: str) -> None:
    res = runner.invoke(app, ["simulate", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_an_unreachable_ray_cluster_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = runner.invoke(
        app,
        [
            *("simulate", "--backend", "ray", "--members", "3", "--rounds", "1"),
            *("--address", f"127.0.0.1:{port}", "--dir", str(tmp_path)),
        ],
    )
    assert res.exit_code == 2, res.output
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in res.output
    assert "Traceback" not in res.output


def test_simulate_help_explains_the_backends() -> None:
    res = runner.invoke(app, ["simulate", "--help"])
    assert res.exit_code == 0
    assert "--backend" in res.output and "--address" in res.output and "Ray" in res.output


def test_the_committee_tail_figures_of_the_issue() -> None:
    # A third dishonest in 1000: a committee of 100 holds more than 33 about half the time.
    assert 0.4 < committee_unsafe_probability(1000, 100, 333) < 0.6
    # About 10 % dishonest keeps a committee of 100 safe near 2^-40.
    assert committee_unsafe_probability(1000, 100, 100) < 2**-38
    # The whole consortium as its committee: safe when fewer than a third are dishonest.
    assert committee_unsafe_probability(100, 100, 33) == 0.0
    assert committee_unsafe_probability(100, 100, 34) == 1.0


def test_a_committee_is_a_pure_function_of_the_round_beacon() -> None:
    members = [f"m{i:03d}" for i in range(50)]
    a = committee_for(b"\1" * 32, members, 10)
    assert a == committee_for(b"\1" * 32, list(reversed(members)), 10)
    assert len(a) == 10 and set(a) <= set(members) and a == sorted(a)
    assert a != committee_for(b"\2" * 32, members, 10)
    assert committee_for(b"\1" * 32, members, 50) == sorted(members)
    with pytest.raises(ValueError):
        committee_for(b"\1" * 32, members, 51)


def _descendants(pid: int) -> list[int]:
    """Live processes below `pid` (from /proc), zombies left out."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.slow
def test_ray_backend_with_two_actors_leaves_no_ray_process(tmp_path: Path) -> None:
    import ray

    from consortium.node.ray_host import RayBackend

    before = set(_descendants(os.getpid()))
    # With committees (4 of 6 contribute each round; all 6, on both actors, cosign).
    s = SimSettings(
        members=6, rounds=2, d=8, backend="ray", actors=2, per_round=4, corrupt_fraction=0.1
    )
    result = asyncio.run(simulate_async(s, tmp_path, RayBackend(2)))
    assert result.rounds_done == 2 and not result.notes
    actors = {h.pid for h in result.hosts}
    assert len(actors) == 2 and os.getpid() not in actors
    assert result.remote_bytes > 0  # members on the two actors talked through Ray
    assert len({root for h in result.hosts for root in h.roots}) == 1
    assert not ray.is_initialized()
    # Ray's daemons were this process's children and the actors their workers: all gone (Ray
    # stops them as it shuts down; wait for the kernel to reap them, whatever the load).
    for _ in range(600):
        left = (set(_descendants(os.getpid())) - before) | {p for p in actors if _alive(p)}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def test_a_manifest_verified_once_per_process_still_refuses_other_bytes(tmp_path: Path) -> None:
    from consortium.core.errors import GenesisError
    from consortium.node.sim import create_consortium

    d = create_consortium(tmp_path, 3, consent=False)[0]
    path = d / GENESIS_FILE
    good = Genesis.load_verified(path)  # verified, and its bytes remembered
    assert Genesis.load_verified(path).digest() == good.digest()
    text = path.read_text()
    path.write_text(text.replace('"quorum": 2', '"quorum": 3'))  # the members signed quorum 2
    with pytest.raises(GenesisError, match="invalid signature"):
        Genesis.load_verified(path)


def test_entry_zero_verified_once_per_process_still_refuses_other_bytes(tmp_path: Path) -> None:
    from consortium.core.errors import LedgerError
    from consortium.ledger.entries import Entry, genesis_entry, genesis_from_bytes
    from consortium.node.sim import create_consortium

    d = create_consortium(tmp_path, 3, consent=False)[0]
    genesis = Genesis.load(d / GENESIS_FILE)
    data = genesis_entry(genesis).data
    assert genesis_from_bytes(data).digest() == genesis.digest()
    assert genesis_from_bytes(data).digest() == genesis.digest()  # from the cache
    entry = Entry.from_bytes(data)
    body = dict(entry.body, quorum=3)  # what the members did not sign
    forged = Entry(entry.kind, entry.author, body, dict(entry.signatures), entry.time).data
    with pytest.raises(LedgerError, match="not a valid genesis manifest"):
        genesis_from_bytes(forged)
