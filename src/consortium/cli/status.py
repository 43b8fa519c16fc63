"""`consortium run status DIR` and `consortium run watch DIR`: follow a run from a node folder.

Both read the folder only (`node.run_status`): safe while the node runs, and they never take its
lock. `watch` polls; its clock and its wait are module attributes (`_now`, `_wait`) so tests
replace them and never sleep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from consortium.cli.common import console, err_console, fail, handle_errors
from consortium.node.run_status import (
    ACCURACY_NOT_PUBLISHED,
    FolderReader,
    RoundView,
    RunStatus,
    config_summary,
    format_epsilon,
    privacy_summary,
)

#: Injected by tests: the wall clock (seconds) and the wait between two polls.
_now: Callable[[], float] = time.time
_wait: Callable[[float], None] = time.sleep

#: `run watch` exit codes: 0 finished, 1 stopped (the reason is printed), 130 interrupted.
EXIT_STOPPED = 1
EXIT_INTERRUPTED = 130


# -- formatting ------------------------------------------------------------------------------


_eps = format_epsilon


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _named(s: RunStatus, text: str) -> str:
    """`text` with every member's node id replaced by its name."""
    for node_id, name in s.members.items():
        text = text.replace(node_id, name)
    return text


def _names(s: RunStatus, ids: Iterable[str]) -> str:
    return ", ".join(sorted(s.name(i) for i in ids))


def state_text(s: RunStatus) -> Text:
    done = f"{s.committed} of {s.target} rounds"
    if s.state == "finished":
        return Text.assemble(("finished", "green"), f": {done} committed")
    if s.state == "stopped":
        return Text.assemble(("stopped", "red"), f" after {done} {_named(s, s.reason)}")
    return Text.assemble(("running", "cyan"), f": {done} committed")


def round_line(s: RunStatus, r: RoundView) -> str:
    """One committed round, as `watch` prints it."""
    eps = "" if r.epsilon is None else f", ε {_eps(r.epsilon)}"
    dropped = f", dropped {_names(s, r.dropouts)}" if r.dropouts else ""
    return (
        f"round {r.round}/{s.target} committed: leader {s.name(r.leader)} (attempt "
        f"{r.attempt}), {len(r.participants)} participants{dropped}{eps}"
    )


def challenges_summary(s: RunStatus) -> str:
    """Per holder, its last challenge result: proved, or the artifacts it was named missing on."""
    if not s.challenges:
        every = s.config.challenge_every
        return f"none yet (every {every} rounds, at most {s.config.challenge_artifacts} artifacts)"
    parts = []
    for v in sorted(s.challenges, key=lambda v: s.name(v.holder)):
        if v.missing:
            lost = ", ".join(v.missing)
            also = f", proved {len(v.proved)}" if v.proved else ""
            parts.append(f"{s.name(v.holder)} missing {lost}{also} (round {v.round})")
        else:
            parts.append(f"{s.name(v.holder)} proved {len(v.proved)} (round {v.round})")
    return "; ".join(parts)


def status_table(s: RunStatus) -> Table:
    """Every value is plain text (never markup): names and reasons come from the folder."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()

    def row(key: str, value: str | Text) -> None:
        table.add_row(key, value if isinstance(value, Text) else Text(value))

    me = f" (this folder: {s.name(s.node)})" if s.node else ""
    row("consortium", f"{s.consortium}, {len(s.members)} members{me}")
    row("run", f"{s.run}, agreed at ledger entry {s.config_index}")
    row("config", config_summary(s))
    row("rounds", f"{s.committed} of {s.target} committed")
    r = s.latest
    if r is None:
        row("latest round", "none committed yet")
    else:
        row(
            "latest round",
            f"{r.round}: leader {s.name(r.leader)}, attempt {r.attempt}, committed "
            f"{_when(r.time)} (ledger entry {r.index})",
        )
        row(
            "participants",
            f"{_names(s, r.participants)} ({len(r.participants)} of {len(s.members)})"
            + (f"; dropped: {_names(s, r.dropouts)}" if r.dropouts else ""),
        )
    row(
        "privacy", "no differential privacy" if s.privacy is None else privacy_summary(s, s.privacy)
    )
    if s.config.challenge_every:
        row("challenges", challenges_summary(s))
    row("accuracy", ACCURACY_NOT_PUBLISHED)
    row("state", state_text(s))
    if s.node_note:
        row("this node", _named(s, s.node_note))
    return table


# -- commands --------------------------------------------------------------------------------


@handle_errors
def status(
    directory: Path = typer.Argument(..., help="A node folder (read only; the node may run)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead."),
) -> None:
    """Show the current (or last) run of a node folder.

    Its agreed configuration, rounds committed, the latest round's leader, attempt and
    participants, ε spent against the purpose's budget, and whether it finished or stopped.
    Reads the folder only: safe while the node runs."""
    s = FolderReader(directory).read()
    if as_json:
        typer.echo(json.dumps(s.to_json(), sort_keys=True))
        return
    console.print(status_table(s))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def _describe(s: RunStatus) -> str:
    r = s.latest
    if r is None:
        return "waiting for round 1"
    text = f"leader {s.name(r.leader)} · attempt {r.attempt} · {len(r.participants)} nodes"
    if s.state == "running":
        text += f" · last commit {_ago(_now() - r.time / 1000)} ago"
    return text


class _Display:
    """The live view: a progress bar of rounds (and of ε against the budget), one printed line
    per committed round; or, with --json, one JSON line per change."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.progress = Progress(
            TextColumn(
                "{task.fields[head]}", markup=False, table_column=Column(no_wrap=True, min_width=12)
            ),
            BarColumn(bar_width=24),
            TextColumn("{task.description}", markup=False, table_column=Column(ratio=1)),
            TimeElapsedColumn(),
            console=console,
        )
        self.rounds: TaskID | None = None
        self.eps: TaskID | None = None
        self.shown = 0  # rounds printed so far
        self.last_json = ""

    def __enter__(self) -> _Display:
        if not self.as_json:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.as_json:
            self.progress.stop()

    def show(self, s: RunStatus) -> None:
        if self.as_json:
            line = json.dumps(s.to_json(), sort_keys=True)
            if line != self.last_json:
                typer.echo(line)
                self.last_json = line
            return
        if self.rounds is None:
            self.progress.console.print(
                f"run {s.run}: {config_summary(s)}", markup=False, highlight=False
            )
            self.rounds = self.progress.add_task("", total=s.target, head="")
        for r in s.rounds[self.shown :]:
            self.progress.console.print(round_line(s, r), markup=False, highlight=False)
        self.shown = len(s.rounds)
        self.progress.update(
            self.rounds,
            completed=s.committed,
            head=f"round {s.committed}/{s.target}",
            description=_describe(s),
        )
        p = s.privacy
        if p is not None and p.budget_epsilon is not None and p.spent is not None:
            spent = min(p.spent, p.budget_epsilon)
            if self.eps is None:
                self.eps = self.progress.add_task("", total=p.budget_epsilon, head="")
            self.progress.update(
                self.eps,
                completed=spent,
                head=f"ε {_eps(p.spent)}/{p.budget_epsilon:g}",
                description=f"spent on purpose {p.purpose!r}",
            )


def follow(
    read: Callable[[], RunStatus],
    show: Callable[[RunStatus], None],
    wait: Callable[[float], None],
    interval: float,
) -> RunStatus:
    """Read and show the run until it is no longer running; return its last status."""
    while True:
        s = read()
        show(s)
        if s.state != "running":
            return s
        wait(interval)


@handle_errors
def watch(
    directory: Path = typer.Argument(..., help="A node folder (read only; the node may run)."),
    interval: float = typer.Option(1.0, min=0.05, help="Seconds between two reads."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (as `run status --json`) per change."
    ),
) -> None:
    """Follow the current run of a node folder with a live progress bar.

    Until the run finishes (exit 0) or stops (exit 1, with the reason); Ctrl-C stops watching
    (exit 130), not the run. Reads the folder only: safe while the node runs."""
    reader = FolderReader(directory)
    first = reader.read()  # a folder without a run fails here, before any display
    pending = [first]

    def read() -> RunStatus:  # the run watched from the start, even once another is agreed
        return pending.pop() if pending else reader.read(first.run)

    try:
        with _Display(as_json) as display:
            s = follow(read, display.show, _wait, interval)
    except KeyboardInterrupt:
        err_console.print(
            "stopped watching (the run goes on; `consortium run stop` stops it)", highlight=False
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if s.state == "stopped":
        fail(
            f"run {s.run} stopped after {s.committed} of {s.target} rounds {_named(s, s.reason)}",
            EXIT_STOPPED,
        )
    if not as_json:
        console.print(
            f"run {s.run} finished: {s.committed} of {s.target} rounds committed",
            markup=False,
            highlight=False,
        )
