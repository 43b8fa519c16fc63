"""`consortium demo`: a whole consortium on 127.0.0.1, trained end to end, then audited."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consortium.audit import audit as audit_folder
from consortium.cli.common import console, handle_errors
from consortium.cli.ui import serve
from consortium.consent import erase_subject
from consortium.consent.erasure import checkpoint_for
from consortium.consent.registry import ConsentRegistry
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis, Purpose
from consortium.core.layout import CONSENT_FILE, LEDGER_FILE, STATUS_FILE, STORE_DIR
from consortium.learning import TrainConfig, load_dataset, set_weights, train_centralized
from consortium.learning.builtin import builtin_task
from consortium.learning.datasets import Dataset
from consortium.learning.serialize import weights_from_bytes
from consortium.learning.task import (
    Examples,
    NodeContext,
    Task,
    evaluate_task,
    load_data,
    load_task,
)
from consortium.learning.task import build_model as build_task_model
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.runner import report_lines, start_run
from consortium.node.sim import Cluster, create_consortium
from consortium.privacy.budget import totals
from consortium.privacy.config import PrivacyConfig
from consortium.protocol.record import RoundRecord, run_records
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes


def demo_declarations(dataset: str) -> dict[str, Any]:
    """What the demo's purpose declares for its record of processing (GDPR Article 30)."""
    return {
        "data_categories": (f"{dataset} examples with their labels (synthetic data subjects)",),
        "recipients": ("the consortium's members (the trained model only)",),
        "retention": "until the demo's run folder is deleted",
    }


def genesis_budget(d: Path) -> str:
    p = Genesis.load(d / "genesis.json").purpose("research")
    return f"epsilon {p.epsilon}, delta {p.delta}"


def _node_id(d: Path) -> str:
    return str(json.loads((d / "node.pub").read_text())["node_id"])


def _records(d: Path) -> list[RoundRecord]:
    try:
        with Ledger.open(d / LEDGER_FILE) as ledger:
            return run_records(ledger)
    except (ConsortiumError, OSError):
        return []


@handle_errors
def demo(
    nodes: int = typer.Option(5, min=2, max=50, help="Members, each a separate OS process."),
    rounds: int = typer.Option(10, min=1, help="Training rounds."),
    dataset: str = typer.Option("digits", help="digits | breast_cancer | fashion-mnist."),
    alpha: float = typer.Option(0.5, help="Dirichlet label-skew concentration of the shards."),
    seed: int = typer.Option(0, help="Seed of shards, initial model and batch order."),
    model: str = typer.Option("mlp", help="mlp | cnn | logreg."),
    epochs: int = typer.Option(2, min=1, help="Local epochs per round."),
    lr: float = typer.Option(0.05, help="Learning rate."),
    secure_aggregation: str = typer.Option(
        "secagg+", help="secagg+ (the leader learns only the sum) or none (plaintext FedAvg)."
    ),
    anchor_every: int = typer.Option(
        5,
        min=0,
        help="Anchor the final tree head on each node's embedded EVM chain every k rounds.",
    ),
    dp: str = typer.Option(
        "record", help="Differential privacy unit: none, record (DP-SGD), client or both."
    ),
    epsilon: float = typer.Option(
        8.0, help="Target epsilon of the run (delta 1e-5); the purpose's budget is 2.5x this."
    ),
    erase: bool = typer.Option(
        True,
        help="After the run, erase one data subject and retrain from the checkpoint before "
        "their first use (the cost is reported).",
    ),
    out: Path | None = typer.Option(None, "--dir", help="Run folder (default runs/demo-TIME)."),
    ui: bool = typer.Option(
        False, "--ui", help="Then serve the dashboard over the run folder (Ctrl-C stops it)."
    ),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="The dashboard's port."),
) -> None:
    """Create a consortium, train it over gRPC with mTLS, compare with central training, audit."""
    t0 = time.time()
    root = out or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    if root.exists() and any(root.iterdir()):
        raise ConsortiumError(f"{root} is not empty; pick another --dir")
    console.print(
        f"[bold]Consortium demo[/]: {nodes} nodes, {rounds} rounds, {dataset}, "
        f"Dirichlet(alpha={alpha}) shards, run folder {root}"
    )
    budget = Purpose(
        "research",
        2.5 * epsilon if dp != "none" else None,
        1e-5 if dp != "none" else None,
        **demo_declarations(dataset),
    )
    dirs = create_consortium(
        root,
        nodes,
        dataset=dataset,
        alpha=alpha,
        seed=seed,
        purpose=budget,
        allow_plaintext=secure_aggregation == "none",
    )
    privacy = (
        PrivacyConfig()
        if dp == "none"
        else PrivacyConfig.model_validate(
            {"unit": dp, "target_epsilon": epsilon, "delta": 1e-5, "client_clip": 5.0}
        )
    )
    cluster = Cluster(dirs)
    run = RunConfig(
        rounds=rounds,
        dataset=dataset,
        model=model,
        epochs=epochs,
        lr=lr,
        seed=seed,
        anchor_every=anchor_every,
        secure_aggregation=secure_aggregation,
        privacy=privacy,
        min_updates=max(1, (nodes + 1) // 2),
        collect_timeout=5.0,
        round_timeout=15.0,
        started=int(time.time() * 1000),
    ).pinned()
    genesis = Genesis.load(dirs[0] / "genesis.json")
    names = {m.node_id: m.name for m in genesis.members}
    try:
        cluster.start_all()
        cluster.wait_ready()
        report = asyncio.run(start_run(dirs[0], None, run))
        if not report["started"]:
            raise ConsortiumError("run not agreed: " + "; ".join(report_lines(report)))
        records = _follow(dirs[0], run, cluster, names, withdraw_after=rounds // 3)
    finally:
        cluster.stop_all()
    erasure = _erase_and_retrain(dirs, run, cluster, names) if erase else ""
    _summary(root, dirs, run, records, names, t0, erasure)
    console.print(
        f"follow it in a browser: [bold]consortium ui {root}[/] (http://127.0.0.1:{port}/, "
        f"read-only); a report for a regulator: consortium report {root} --out report.html",
        highlight=False,
        soft_wrap=True,
    )
    if ui:
        serve(root, port)


def _erase_and_retrain(
    dirs: list[Path], run: RunConfig, cluster: Cluster, names: dict[str, str]
) -> str:
    """Erase one data subject of node1 and retrain from the model before their first use."""
    d = dirs[1]
    with ConsentRegistry(d / CONSENT_FILE) as registry:
        subject = sorted({s.subject for s in registry.state(purpose=run.purpose)})[0]
        er = erase_subject(registry, subject, at=time.time())
    checkpoint, redo = checkpoint_for(er, [r.ref() for r in _records(d)])
    checkpoint = checkpoint.set(base="base32") if checkpoint is not None else None
    if checkpoint is None:
        return f"erased a data subject of {d.name}: never used, nothing to retrain"
    console.print(
        f"erasing a data subject of {d.name} ({len(er.record_ids)} record): retraining "
        f"{redo} rounds from the checkpoint before its first use"
    )
    retrain = run.model_copy(
        update={
            "rounds": redo,
            "initial_model": str(checkpoint),
            "started": int(time.time() * 1000),
        }
    )
    for folder in dirs:
        (folder / STATUS_FILE).unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        cluster.start_all()
        cluster.wait_ready()
        report = asyncio.run(start_run(dirs[0], None, retrain))
        if not report["started"]:
            raise ConsortiumError("retraining not agreed: " + "; ".join(report_lines(report)))
        redone = _follow(d, retrain, cluster, names, withdraw_after=0)
    finally:
        cluster.stop_all()
    took = time.perf_counter() - t0
    eps = _epsilon(redone[-1]) if redone else None
    spent = "" if eps is None else f"; the purpose's privacy spend is now epsilon {eps:.2f}"
    return (
        f"erasure: {len(er.record_ids)} record of {d.name} forgotten by retraining {redo} rounds "
        f"from checkpoint {str(checkpoint)[:16]}… in {took:.1f} s (processes included){spent}"
    )


def _withdraw_some(d: Path, fraction: float) -> int:
    """Data subjects of this node withdraw consent now (the demo's mid-run change of mind)."""
    with ConsentRegistry(d / CONSENT_FILE) as registry:
        subjects = sorted({s.subject for s in registry.state(purpose="research")})
        chosen = subjects[: max(1, int(len(subjects) * fraction))]
        registry.withdraw_many(chosen, at=time.time())
    return len(chosen)


def _follow(
    d: Path, run: RunConfig, cluster: Cluster, names: dict[str, str], withdraw_after: int
) -> list[RoundRecord]:
    columns = [
        TextColumn("[bold]round {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ]
    deadline = time.time() + run.rounds * run.round_timeout * 4 + 60
    records: list[RoundRecord] = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("waiting for round 1", total=run.rounds)
        withdrawn = 0
        while len(records) < run.rounds:
            if time.time() > deadline:
                raise ConsortiumError("the run did not finish in time; see node*/node.log")
            if not cluster.alive():
                raise ConsortiumError("all node processes exited; see node*/node.log")
            time.sleep(0.3)
            records = [r for r in _records(d) if r.run == run.run_id()]
            if withdraw_after and len(records) >= withdraw_after and not withdrawn:
                withdrawn = _withdraw_some(d, 0.2)
                progress.console.print(
                    f"after round {len(records)}: {withdrawn} data subjects of "
                    f"{names.get(_node_id(d), d.name)} withdraw consent"
                )
            if records:
                last = records[-1]
                progress.update(
                    task,
                    completed=len(records),
                    description=f"leader {names.get(last.leader, '?')} · test acc "
                    f"{_test_accuracy(d, run, last):.3f} · {len(last.participants)} nodes"
                    + _epsilon_text(last),
                )
    # Every live node commits the last round too before the demo stops them.
    end = time.time() + 30
    while time.time() < end and not all(cluster.status(i).get("finished") for i in cluster.alive()):
        time.sleep(0.2)
    return records


@functools.lru_cache(maxsize=2)
def _test_set(name: str) -> Dataset:
    return load_dataset(name, seed=0)


@functools.lru_cache(maxsize=2)
def _task_test(spec: str, dataset: str, model: str) -> tuple[Task, Examples]:
    task = load_task(spec) if spec else builtin_task(dataset, model)
    return task, load_data(task, NodeContext())[1]


def _test_accuracy(d: Path, run: RunConfig, record: RoundRecord) -> float:
    """The round's global model on the task's public test split. Nodes publish no accuracy
    of their own (a figure computed from private data); anyone can measure the shared model."""
    task, test = _task_test(run.task, run.dataset, run.model)
    model, _ = build_task_model(task, run.seed)
    set_weights(model, weights_from_bytes(get_bytes(BlockStore(d / STORE_DIR), record.model)))
    return evaluate_task(task, model, test)["accuracy"]


def _epsilon(record: RoundRecord) -> float | None:
    """The largest privacy total after this round (client level, or the worst node)."""
    if not record.privacy:
        return None
    return max(totals([record.privacy]).values(), default=None)


def _epsilon_text(record: RoundRecord) -> str:
    eps = _epsilon(record)
    return "" if eps is None else f" · ε {eps:.2f}"


def _summary(
    root: Path,
    dirs: list[Path],
    run: RunConfig,
    records: list[RoundRecord],
    names: dict[str, str],
    t0: float,
    erasure: str,
) -> None:
    ds = _test_set(run.dataset)
    acc = _test_accuracy(dirs[0], run, records[-1])
    central = train_centralized(
        ds,
        run.model,
        run.rounds * run.epochs,
        TrainConfig(lr=run.lr, momentum=run.momentum, seed=run.seed),
        run.seed,
    )
    table = Table(title="Rounds")
    first = min(names, key=names.__getitem__)  # node0: the one whose subjects withdraw
    for col in (
        "round",
        "leader",
        "attempt",
        "participants",
        "records used",
        "node0 records",
        "ε so far",
        "test acc",
    ):
        table.add_column(col)
    for r in records:
        mine = r.consent.get(first)
        table.add_row(
            str(r.round),
            names.get(r.leader, "?"),
            str(r.attempt),
            str(len(r.participants)),
            str(sum(c.count for c in r.consent.values())),
            "-" if mine is None else str(mine.count),
            "-" if (e := _epsilon(r)) is None else f"{e:.2f}",
            f"{_test_accuracy(dirs[0], run, r):.3f}",
        )
    console.print(table)
    samples = dict(sorted((names.get(k, k), v) for k, v in records[-1].samples.items()))
    report = audit_folder(dirs[0])
    roots = set()
    for d in dirs:
        with Ledger.open(d / LEDGER_FILE) as ledger:
            roots.add(ledger.root())
    console.print(f"final test accuracy (federated): [bold]{acc:.4f}[/]")
    console.print(f"same model trained centrally, same epoch budget: {central:.4f} (no DP)")
    if (eps := _epsilon(records[-1])) is not None:
        console.print(
            f"differential privacy: {run.privacy.unit}-level, epsilon {eps:.2f} at delta "
            f"{run.privacy.delta} spent of the purpose's budget "
            f"{genesis_budget(dirs[0])} (totals recomputed by the audit)"
        )
    console.print("samples per node: " + ", ".join(f"{k}={v}" for k, v in samples.items()))
    console.print(
        f"ledger: {report.entries} entries, root {report.root.hex()}, "
        f"{report.final_heads} final heads; replicas agree: {len(roots) == 1}"
    )
    if erasure:
        console.print(erasure)
    console.print(f"run folder: {root.resolve()}")
    console.print(
        f"audit {dirs[0]}: OK ({report.artifacts} artifacts re-hashed, "
        f"{report.anchored} anchored heads match the chain, latest size "
        f"{report.latest_anchored_size}; {report.secure_rounds} SecAgg+ sums recomputed from "
        "their published transcripts)"
    )
    console.print(f"done in {time.time() - t0:.1f} s")
