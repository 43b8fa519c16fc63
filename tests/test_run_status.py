"""`consortium run status` / `run watch` on real run folders, and `run start`/`run stop` reports.

The folders come from real in-process runs (nodes, ledgers, DP-SGD); the commands go through
typer's runner. `watch` never sleeps here: its wait (`cli.status._wait`) is replaced, either by
one that fails (a run that is over must end the watch at the first read) or by one that lets
the in-process nodes commit the next round.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from consortium.cli import status as status_cli
from consortium.core.genesis import Purpose
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger import Ledger
from consortium.node.config import PolicyConfig
from consortium.node.node import Node
from consortium.node.run_status import FolderReader, RunStatus, read_run_status
from consortium.privacy.budget import totals
from consortium.protocol.record import privacy_history
from tests.cli_support import cli, words
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.records import ledger_records

DP = {"unit": "record", "noise_multiplier": 1.5, "clip_norm": 1.0}


async def _stop_all(nodes: list[Node]) -> None:
    for n in nodes:
        await n.stop()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Node folders of finished, stopped and budget-stopped runs, and of a consortium with no run.

    finished: two runs of one budgeted purpose (1 round, then 2), so the spend of the latest
    run's purpose counts the earlier run too. stopped: the members agreed to stop it before its
    first round. budget: record-level DP stops a run before a round would pass ε 3, then the
    next run before its first round (the purpose's budget is spent). idle: a
    run start no quorum accepted (one member unreachable, one refusing by policy). sitout: the
    folder of a member whose policy refused a run the others started (stopped at once)."""
    root = tmp_path_factory.mktemp("runs")
    out: dict[str, Path] = {}

    async def finished() -> None:
        nodes, net, clock = await cluster(
            root / "finished", 3, 71, purpose=Purpose("research", 8.0, 1e-5)
        )
        try:
            for rounds in (1, 2):
                await start(nodes, run_config(rounds, rounds, privacy=DP))
                await drive(nodes, net, clock)
        finally:
            await _stop_all(nodes)
        out["finished"] = nodes[0].dir

    async def stopped() -> None:
        nodes, _, _ = await cluster(root / "stopped", 3, 72, consent=False)
        try:
            await start(nodes, run_config(50, 0))
            report = await nodes[1].propose_stop(
                "the data controller asked for a pause [ref 7] [/x]"
            )
            assert report["agreed"], report
        finally:
            await _stop_all(nodes)
        out["stopped"] = nodes[0].dir

    async def budget() -> None:
        nodes, net, clock = await cluster(
            root / "budget", 3, 73, purpose=Purpose("research", 3.0, 1e-5)
        )
        try:
            await start(nodes, run_config(20, 0, privacy=DP))
            await drive(nodes, net, clock)
            assert all(n.stopped.startswith("stopping before round") for n in nodes)
            await start(nodes, run_config(20, 1, privacy=DP))  # the budget is spent already
            await drive(nodes, net, clock)
            assert all(n.stopped.startswith("stopping before round 1:") for n in nodes)
        finally:
            await _stop_all(nodes)
        out["budget"] = nodes[0].dir

    async def idle() -> None:
        nodes, net, _ = await cluster(root / "idle", 4, 74, consent=False)  # quorum 3
        try:
            nodes[2].config = nodes[2].config.model_copy(update={"policy": PolicyConfig()})
            net.disconnect(nodes[1].identity.node_id)
            report = await nodes[0].propose_run(run_config(2, 0))  # plaintext: node2 refuses
            assert not report["started"]
            (root / "idle-report.json").write_text(json.dumps(report))
        finally:
            await _stop_all(nodes)
        out["idle"] = nodes[0].dir

    async def sitout() -> None:
        nodes, _, _ = await cluster(root / "sitout", 4, 76, consent=False)  # quorum 3
        try:
            nodes[2].config = nodes[2].config.model_copy(update={"policy": PolicyConfig()})
            report = await nodes[0].propose_run(run_config(1, 0))  # plaintext: node2 refuses
            assert report["started"] and list(report["refused"]) == ["node2"], report
            (root / "sitout-report.json").write_text(json.dumps(report))
        finally:
            await _stop_all(nodes)
        out["sitout"] = nodes[2].dir

    for build in (finished, stopped, budget, idle, sitout):
        asyncio.run(build())
    yield out


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """`watch` may not wait: the run it watches is over."""
    calls: list[float] = []

    def wait(seconds: float) -> None:
        calls.append(seconds)
        raise AssertionError("watch waited for a run that is over")

    monkeypatch.setattr(status_cli, "_wait", wait)
    return calls


# -- status ----------------------------------------------------------------------------------


def test_status_json_says_what_the_ledger_records(folders: dict[str, Path]) -> None:
    folder = folders["finished"]
    code, out, err = cli("run", "status", str(folder), "--json")
    assert code == 0, err
    s = json.loads(out)
    records = ledger_records(folder)
    latest = records[-1]
    with Ledger.open(folder / LEDGER_FILE, readonly=True) as ledger:
        names = {m.node_id: m.name for m in ledger.genesis().members}
    assert s["run"]["id"] == latest.run and s["run"]["rounds"] == 2
    assert s["run"]["purpose"] == "research" and s["run"]["secure_aggregation"] == "none"
    assert (
        s["run"]["privacy"]["unit"] == "record" and s["run"]["privacy"]["noise_multiplier"] == 1.5
    )
    assert s["rounds"] == {"committed": 2, "target": 2}
    assert s["state"] == "finished" and s["reason"] == ""
    assert s["latest_round"]["round"] == 2 and s["latest_round"]["attempt"] == latest.attempt
    assert s["latest_round"]["leader"] == {"name": names[latest.leader], "id": latest.leader}
    assert [p["id"] for p in s["latest_round"]["participants"]] == list(latest.participants)
    # ε: the purpose's history over both runs (1 + 2 rounds), the totals its last round records.
    history = privacy_history(records, "research")
    assert len(history) == 3 and s["privacy"]["rounds_charged"] == 3
    recorded = {names[k.removeprefix("record:")]: v for k, v in totals(history).items()}
    assert s["privacy"]["record"] == recorded
    assert recorded == {names[k]: v["total_epsilon"] for k, v in latest.privacy["record"].items()}
    assert s["privacy"]["spent"] == max(recorded.values()) and s["privacy"]["client"] is None
    assert s["privacy"]["budget"] == {"epsilon": 8.0, "delta": 1e-5}
    assert 0 < s["privacy"]["spent"] < 8
    assert s["accuracy"] is None and "not published" in s["accuracy_note"]
    assert s["node"]["name"] == "node0"
    # The earlier run of the two, as it ended: finished, the purpose's spend as of then.
    earlier = FolderReader(folder).read(records[0].run)
    assert earlier.state == "finished" and earlier.committed == earlier.target == 1
    assert earlier.privacy is not None and earlier.privacy.rounds_charged == 1
    assert earlier.privacy.spent == max(totals([records[0].privacy]).values())


def test_status_table(folders: dict[str, Path]) -> None:
    folder = folders["finished"]
    code, out, err = cli("run", "status", str(folder))
    assert code == 0, err
    text = words(out)
    latest = ledger_records(folder)[-1]
    s = read_run_status(folder)
    assert f"run {latest.run}" in text
    assert "purpose research · 2 rounds of mlp on digits" in text
    own = s.config.model_copy(update={"task": "mypkg.task:task"})  # not mlp on digits
    assert "· 2 rounds of task mypkg.task:task ·" in status_cli.config_summary(
        replace(s, config=own)
    )
    assert "secure aggregation none" in text and "record-level DP (noise multiplier 1.5" in text
    assert "rounds 2 of 2 committed" in text
    assert f"latest round 2: leader {s.name(latest.leader)}, attempt {latest.attempt}" in text
    assert (
        f"participants {', '.join(sorted(s.name(p) for p in latest.participants))} (3 of 3)" in text
    )
    assert s.privacy is not None and s.privacy.spent is not None
    assert f"ε {s.privacy.spent:.2f} of budget ε 8 (δ 1e-05) spent on purpose 'research'" in text
    assert "accuracy not published" in text
    assert "state finished: 2 of 2 rounds committed" in text


def test_status_of_stopped_runs(folders: dict[str, Path]) -> None:
    code, out, err = cli("run", "status", str(folders["stopped"]), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["state"] == "stopped" and s["rounds"] == {"committed": 0, "target": 50}
    reason = "the data controller asked for a pause [ref 7] [/x]"  # brackets: text, not markup
    assert s["reason"] == f"by agreement of the members: {reason}"
    assert s["privacy"] is None and s["latest_round"] is None
    code, out, err = cli("run", "status", str(folders["stopped"]))
    assert code == 0, err
    assert f"stopped after 0 of 50 rounds by agreement of the members: {reason}" in words(out)

    code, out, err = cli("run", "status", str(folders["budget"]))
    assert code == 0, err
    text = words(out)
    assert "stopped after 0 of 20 rounds on this node: stopping before round 1: " in text
    assert "above the budget epsilon 3.0" in text
    assert "bafz" not in text.split("state", 1)[1]  # the reason names members, not node ids


def test_the_budget_is_the_purposes_and_an_earlier_run_ended_when_the_next_was_agreed(
    folders: dict[str, Path],
) -> None:
    records = ledger_records(folders["budget"])
    first = records[0].run
    assert 0 < len(records) < 20 and {r.run for r in records} == {first}
    latest = read_run_status(folders["budget"])
    assert latest.run != first and latest.committed == 0
    spent = max(totals([records[-1].privacy]).values())
    assert latest.privacy is not None and latest.privacy.rounds_charged == len(records)
    assert latest.privacy.spent == spent  # the earlier run's spend counts against the budget

    earlier = FolderReader(folders["budget"]).read(first)
    assert earlier.state == "stopped" and earlier.committed == len(records)
    assert earlier.reason == (
        f"before the members agreed run {latest.run} (ledger entry {latest.config_index})"
    )
    assert earlier.privacy is not None and earlier.privacy.spent == spent


def test_status_of_a_member_that_sits_the_run_out(folders: dict[str, Path]) -> None:
    """Its node says why in status.json; the run itself goes on (on the others)."""
    code, out, err = cli("run", "status", str(folders["sitout"]))
    assert code == 0, err
    text = words(out)
    assert "state running: 0 of 1 rounds committed" in text
    assert "this node sitting this run out: policy requires secure aggregation" in text
    s = read_run_status(folders["sitout"])
    assert s.state == "running" and s.reason == "" and s.node is not None
    assert s.name(s.node) == "node2"


# -- watch -----------------------------------------------------------------------------------


def test_watch_a_finished_run_exits_0_at_once(
    folders: dict[str, Path], no_wait: list[float]
) -> None:
    code, out, err = cli("run", "watch", str(folders["finished"]))
    assert code == 0, err
    assert no_wait == []
    records = ledger_records(folders["finished"])
    assert "round 1/2 committed" in out and "round 2/2 committed" in out
    assert f"run {records[-1].run} finished: 2 of 2 rounds committed" in words(out)


def test_watch_a_stopped_run_exits_1_with_the_reason(
    folders: dict[str, Path], no_wait: list[float]
) -> None:
    code, _, err = cli("run", "watch", str(folders["stopped"]))
    assert code == 1 and no_wait == []
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert err.strip().endswith(
        "by agreement of the members: the data controller asked for a pause [ref 7] [/x]"
    )

    code, _, err = cli("run", "watch", str(folders["budget"]), "--json")
    assert code == 1 and no_wait == []
    assert "on this node: stopping before round 1" in err and "budget epsilon 3.0" in err


def test_watch_follows_the_run_it_began_with(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run watched while it ran, then another agreed: the watch ends with the first."""
    first = ledger_records(folders["budget"])[0].run
    real = FolderReader.read
    calls: list[str | None] = []

    def read(self: FolderReader, run: str | None = None) -> RunStatus:
        calls.append(run)
        s = real(self, first)
        return replace(s, rounds=s.rounds[:1], next_run=None) if len(calls) == 1 else s

    def wait(seconds: float) -> None:
        assert len(calls) < 5, "watch went on after the run it watched was over"

    monkeypatch.setattr(FolderReader, "read", read)
    monkeypatch.setattr(status_cli, "_wait", wait)
    code, _, err = cli("run", "watch", str(folders["budget"]))
    assert code == 1 and calls == [None, first]
    assert f"run {first} stopped after " in err and "before the members agreed run " in err


def test_follow_reads_until_the_run_is_over(folders: dict[str, Path]) -> None:
    """The polling loop on a scripted sequence of reads: no clock, no sleep."""
    done = read_run_status(folders["finished"])
    seq = [replace(done, rounds=done.rounds[:k]) for k in (0, 1, 1, 2)]
    shown: list[int] = []
    waits: list[float] = []
    last = status_cli.follow(
        lambda: seq.pop(0), lambda s: shown.append(s.committed), waits.append, 0.5
    )
    assert shown == [0, 1, 1, 2] and waits == [0.5, 0.5, 0.5] and last.state == "finished"


def test_watch_ctrl_c_stops_watching_not_the_run(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = replace(read_run_status(folders["finished"]), rounds=())

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(status_cli, "_wait", interrupt)
    monkeypatch.setattr(FolderReader, "read", lambda self, run=None: running)
    code, _, err = cli("run", "watch", str(folders["finished"]))
    assert code == 130
    assert "stopped watching (the run goes on" in err


def test_watch_follows_a_live_run_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`watch` on the folder of a node that is running and writing: each wait lets the nodes
    commit the next round; the watch prints every round and exits 0 when the run finishes."""
    loop = asyncio.new_event_loop()
    nodes, _, clock = loop.run_until_complete(cluster(tmp_path, 3, 75, consent=False))
    waits: list[float] = []

    async def next_commit(size: int) -> None:
        end = loop.time() + 60
        while nodes[0].ledger.size == size and not nodes[0].finished.is_set():
            assert loop.time() < end, "no round committed"
            await asyncio.sleep(0.02)

    def wait(seconds: float) -> None:
        waits.append(seconds)
        assert len(waits) < 20
        loop.run_until_complete(next_commit(nodes[0].ledger.size))

    monkeypatch.setattr(status_cli, "_wait", wait)
    monkeypatch.setattr(status_cli, "_now", clock)
    # The nodes log while the watch runs: keep their lines out of the command's captured output
    # (and away from a handler an earlier test may have left on a closed stream).
    monkeypatch.setattr(logging.root, "handlers", [logging.NullHandler()])
    try:
        loop.run_until_complete(start(nodes, run_config(3, 0)))
        code, out, err = cli("run", "watch", str(nodes[0].dir), "--interval", "0.25")
        assert code == 0, err
        assert 1 <= len(waits) <= 3 and set(waits) == {0.25}
        records = [r for r in ledger_records(nodes[0].dir)]
        assert len(records) == 3
        names = {m.node_id: m.name for m in nodes[0].genesis.members}
        for r in records:
            assert (
                f"round {r.round}/3 committed: leader {names[r.leader]} (attempt {r.attempt})"
                in out
            )
        assert f"run {records[0].run} finished: 3 of 3 rounds committed" in words(out)
        assert nodes[0]._lock.held  # the node kept its writer lock throughout
    finally:
        loop.run_until_complete(_stop_all(nodes))
        loop.close()


def test_watch_json_prints_one_line_per_change(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    done = read_run_status(folders["finished"])
    seq = [replace(done, rounds=done.rounds[:k]) for k in (1, 1, 2)]
    monkeypatch.setattr(status_cli, "_wait", lambda seconds: None)
    monkeypatch.setattr(FolderReader, "read", lambda self, run=None: seq.pop(0))
    code, out, err = cli("run", "watch", str(folders["finished"]), "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["rounds"]["committed"] for x in lines] == [1, 2]
    assert lines[-1]["state"] == "finished"


# -- bad folders -------------------------------------------------------------------------------


def test_what_is_not_a_node_folder_is_one_line_and_exit_2(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    inited = tmp_path / "inited"
    NodeIdentity.generate("x", "127.0.0.1:1").save(inited)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / LEDGER_FILE).write_bytes(b"not a database")
    (tmp_path / "empty").mkdir()
    cases: list[tuple[Path, int, str]] = [
        (tmp_path / "nope", 2, "no such folder"),
        (tmp_path / "empty", 2, "is not a node folder (no ledger.sqlite)"),
        (inited, 2, "has no ledger yet"),
        (folders["finished"] / "genesis.json", 2, "is not a folder"),
        (junk, 1, "is not a consortium ledger"),
        (folders["idle"], 1, "no run on the ledger of"),
    ]
    for command in ("status", "watch"):
        for folder, want, message in cases:
            code, out, err = cli("run", command, str(folder))
            assert code == want, (command, folder, err)
            assert err.startswith("error:") and message in err, (command, err)
            assert len(err.strip().splitlines()) == 1 and out == "", (command, err)


# -- run start and stop: who did not agree -------------------------------------------------------


def _fake_report(monkeypatch: pytest.MonkeyPatch, name: str, report: dict[str, Any]) -> None:
    async def fake(*args: object) -> dict[str, Any]:
        return report

    monkeypatch.setattr(f"consortium.node.runner.{name}", fake)


def test_run_start_without_a_quorum_exits_1_naming_who_refused_or_was_unreachable(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report is the real one a node gave when one member was cut off and one refused."""
    report = json.loads((folders["idle"].parent.parent / "idle-report.json").read_text())
    assert report["accepted"] == ["node0", "node3"]
    _fake_report(monkeypatch, "start_run", report)
    code, out, err = cli("run", "start", "--dir", str(folders["idle"]), "--rounds", "2")
    assert code == 1
    lines = err.strip().splitlines()
    assert (
        lines[0].startswith("refused by node2: ")
        and "policy requires secure aggregation" in lines[0]
    )
    assert lines[1].startswith("unreachable: node1 (")
    assert (
        lines[2].startswith("error: run ") and "not started: accepted by 2 of 4 members" in lines[2]
    )
    assert "(node0, node3), quorum 3" in lines[2] and "started" not in out


def test_run_start_with_a_quorum_exits_0_and_names_who_refused(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    report = json.loads((folders["sitout"].parent.parent / "sitout-report.json").read_text())
    _fake_report(monkeypatch, "start_run", report)
    code, out, err = cli("run", "start", "--dir", str(folders["sitout"]), "--rounds", "1")
    assert code == 0, err
    assert err.startswith("refused by node2: ") and len(err.strip().splitlines()) == 1
    assert "agreed by node0, node1, node3 and started: 1 round of" in words(out)


def test_run_stop_without_a_quorum_exits_1(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    report = {
        "agreed": False,
        "run": "r1",
        "accepted": ["node0"],
        "refused": {},
        "unreachable": {"node1": "node1 is unreachable", "node2": "node2 is unreachable"},
    }
    _fake_report(monkeypatch, "stop_run", report)
    code, out, err = cli("run", "stop", "--dir", str(folders["stopped"]))
    assert code == 1 and out == ""
    assert "unreachable: node1" in err and "unreachable: node2" in err
    assert "run r1 not stopped: accepted by 1 of 3 members (node0), quorum 2" in words(err)


def test_a_refusal_from_the_own_node_is_not_blamed_on_a_stopped_node(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortium.core.errors import PeerRefused
    from consortium.node import runner

    class Refusing:
        async def request(self, *args: object, **kwargs: object) -> bytes:
            raise PeerRefused("node0 refused 'propose-stop': no run is in progress on this node")

        async def stop(self) -> None:
            return None

    monkeypatch.setattr(runner, "make_transport", lambda *a, **k: Refusing())
    code, _, err = cli("run", "stop", "--dir", str(folders["stopped"]))
    assert code == 2
    assert "this member's node refused" in err and "no run is in progress" in err
    assert "is `consortium node start" not in err
