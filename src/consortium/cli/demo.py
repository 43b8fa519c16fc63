"""`consortium demo`: a whole consortium on 127.0.0.1, trained end to end, then audited."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consortium.audit import audit as audit_folder
from consortium.cli.common import console, handle_errors
from consortium.core.errors import ConsortiumError
from consortium.core.genesis import Genesis
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.learning import (
    TrainConfig,
    build_model,
    evaluate,
    load_dataset,
    set_weights,
    train_centralized,
)
from consortium.learning.serialize import weights_from_bytes
from consortium.ledger.log import Ledger
from consortium.node.config import RunConfig
from consortium.node.node import run_records
from consortium.node.runner import start_run
from consortium.node.sim import Cluster, create_consortium
from consortium.store.blockstore import BlockStore
from consortium.store.objects import get_bytes


def _records(d: Path) -> list[dict[str, Any]]:
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
    out: Path | None = typer.Option(None, "--dir", help="Run folder (default runs/demo-TIME)."),
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
    dirs = create_consortium(root, nodes, dataset=dataset, alpha=alpha, seed=seed)
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
        min_updates=max(1, (nodes + 1) // 2),
        collect_timeout=5.0,
        round_timeout=15.0,
        started=int(time.time() * 1000),
    )
    genesis = Genesis.load(dirs[0] / "genesis.json")
    names = {m.node_id: m.name for m in genesis.members}
    try:
        cluster.start_all()
        cluster.wait_ready()
        failed = asyncio.run(start_run(dirs[0], None, run))
        if failed:
            raise ConsortiumError("run did not start on: " + "; ".join(failed))
        records = _follow(dirs[0], run, cluster, names)
    finally:
        cluster.stop_all()
    _summary(root, dirs, run, records, names, t0)


def _follow(
    d: Path, run: RunConfig, cluster: Cluster, names: dict[str, str]
) -> list[dict[str, Any]]:
    columns = [
        TextColumn("[bold]round {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ]
    deadline = time.time() + run.rounds * run.round_timeout * 4 + 60
    records: list[dict[str, Any]] = []
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("waiting for round 1", total=run.rounds)
        while len(records) < run.rounds:
            if time.time() > deadline:
                raise ConsortiumError("the run did not finish in time; see node*/node.log")
            if not cluster.alive():
                raise ConsortiumError("all node processes exited; see node*/node.log")
            time.sleep(0.3)
            records = _records(d)
            if records:
                last = records[-1]
                accs = [m.get("accuracy", 0.0) for m in last["metrics"].values()]
                progress.update(
                    task,
                    completed=len(records),
                    description=f"leader {names.get(last['leader'], '?')} · local acc "
                    f"{sum(accs) / max(1, len(accs)):.3f} · {len(last['participants'])} nodes",
                )
    return records


def _summary(
    root: Path,
    dirs: list[Path],
    run: RunConfig,
    records: list[dict[str, Any]],
    names: dict[str, str],
    t0: float,
) -> None:
    ds = load_dataset(run.dataset, seed=0)
    store = BlockStore(dirs[0] / STORE_DIR)
    final = build_model(run.model, ds.input_shape, ds.num_classes, seed=run.seed)
    set_weights(final, weights_from_bytes(get_bytes(store, records[-1]["model"])))
    acc = evaluate(final, ds.x_test, ds.y_test)[1]
    central = train_centralized(
        ds,
        run.model,
        run.rounds * run.epochs,
        TrainConfig(lr=run.lr, momentum=run.momentum, seed=run.seed),
        run.seed,
    )
    table = Table(title="Rounds")
    for col in ("round", "leader", "attempt", "participants", "mean local acc"):
        table.add_column(col)
    for r in records:
        accs = [m.get("accuracy", 0.0) for m in r["metrics"].values()]
        table.add_row(
            str(r["round"]),
            names.get(r["leader"], "?"),
            str(r["attempt"]),
            str(len(r["participants"])),
            f"{sum(accs) / max(1, len(accs)):.3f}",
        )
    console.print(table)
    samples = dict(sorted((names.get(k, k), v) for k, v in records[0]["samples"].items()))
    report = audit_folder(dirs[0])
    roots = set()
    for d in dirs:
        with Ledger.open(d / LEDGER_FILE) as ledger:
            roots.add(ledger.root())
    console.print(f"final test accuracy (federated): [bold]{acc:.4f}[/]")
    console.print(f"same model trained centrally, same epoch budget: {central:.4f}")
    console.print("samples per node: " + ", ".join(f"{k}={v}" for k, v in samples.items()))
    console.print(
        f"ledger: {report.entries} entries, root {report.root.hex()}, "
        f"{report.final_heads} final heads; replicas agree: {len(roots) == 1}"
    )
    console.print(f"run folder: {root.resolve()}")
    console.print(
        f"audit {dirs[0]}: OK ({report.artifacts} artifacts re-hashed, "
        f"{report.anchored} anchored heads match the chain, latest size "
        f"{report.latest_anchored_size}; {report.secure_rounds} SecAgg+ sums recomputed from "
        "their published transcripts)"
    )
    console.print(f"done in {time.time() - t0:.1f} s")
