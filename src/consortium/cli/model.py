"""`consortium model export` and `model evaluate`: a run's global model out of a node folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from consortium.cli.common import console, handle_errors
from consortium.node.models import evaluate_model, export_model

model_app = typer.Typer(
    help="Export a run's global model, or evaluate it on this node's test data.",
    no_args_is_help=True,
)

_ROUND = typer.Option(
    None, "--round", min=1, help="Round of the run (default: its last committed round)."
)
_RUN = typer.Option(None, "--run", help="Run id (default: the latest run that committed a round).")


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@model_app.command("export")
@handle_errors
def export(
    directory: Path = typer.Argument(..., help="The node folder."),
    out: Path = typer.Option(..., "--out", help="File to write (safetensors)."),
    round_no: int | None = _ROUND,
    run: str | None = _RUN,
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    allow_superseded: bool = typer.Option(
        False,
        "--allow-superseded",
        help="Export a model that a later run retrained from an earlier checkpoint (after an "
        "erasure): it may carry what the retraining removed.",
    ),
) -> None:
    """Write the global model of a round as safetensors, after checking it against the ledger.

    The bytes are read through the round record's model CID (every block re-hashed), so the
    file is exactly what the members cosigned. PyTorch: model.load_state_dict(
    safetensors.torch.load_file(OUT)) loads it into the task's model."""
    done = export_model(
        directory,
        out,
        round_no=round_no,
        run=run,
        force=force,
        allow_superseded=allow_superseded,
    )
    found = done.found
    _say(
        f"wrote {done.out}: the model of {found.describe()}, {done.tensors} tensors, "
        f"{done.parameters} parameters, {done.size} bytes"
    )
    _say(f"model CID {found.cid} (as in the round record; every block re-hashed)")
    if found.superseded is not None:
        _say(f"note: superseded: {found.superseded.describe()}")
    _say(f"load it with: model.load_state_dict(safetensors.torch.load_file({str(done.out)!r}))")


@model_app.command("evaluate")
@handle_errors
def evaluate(
    directory: Path = typer.Argument(..., help="The node folder."),
    round_no: int | None = _ROUND,
    run: str | None = _RUN,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a round's global model on this node's own test data, through the run's task as
    installed here (its default evaluation: loss and accuracy). Nothing is published."""
    res = evaluate_model(directory, round_no=round_no, run=run)
    found = res.found
    if as_json:
        print(
            json.dumps(
                {
                    "run": found.record.run,
                    "round": found.record.round,
                    "model": found.cid,
                    "task": res.task,
                    "examples": res.examples,
                    "superseded": found.superseded.run if found.superseded else None,
                    "metrics": res.metrics,
                },
                sort_keys=True,
            )
        )
        return
    figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted(res.metrics.items()))
    _say(
        f"{found.describe()} on this node's {res.examples} test examples of task "
        f"{res.task}: {figures}"
    )
    if found.superseded is not None:
        _say(f"note: superseded: {found.superseded.describe()}")
