"""`consortium ui DIR [--port P]`: the local, read-only web dashboard over a node or run folder."""

from __future__ import annotations

from pathlib import Path

import typer
import uvicorn

from consortium.cli.common import console, err_console, handle_errors
from consortium.node.run_status import node_folder
from consortium.ui.web import create_app

LOCALHOST = "127.0.0.1"


def serve(directory: Path, port: int, host: str = LOCALHOST) -> None:
    """Serve the dashboard until Ctrl-C (the folder was checked by the caller)."""
    folder = node_folder(directory)
    if host != LOCALHOST:
        err_console.print(
            f"warning: serving on {host}, not only this machine: anyone who reaches it can read "
            "the run (never keys or salts)",
            highlight=False,
        )
    console.print(
        f"dashboard of {folder} on http://{host}:{port}/ (read-only; Ctrl-C stops it)",
        highlight=False,
    )
    uvicorn.run(create_app(folder), host=host, port=port, log_level="warning", access_log=False)


@handle_errors
def ui(
    directory: Path = typer.Argument(
        ..., help="A node folder, or a run folder holding node folders (the first is shown)."
    ),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="TCP port."),
    host: str = typer.Option(
        LOCALHOST, "--host", help="Address to bind (default: this machine only)."
    ),
) -> None:
    """Open a local web dashboard over a node or run folder, read-only.

    The run (members, purpose, rounds, ε against the budget), each round (leader, attempt,
    participants, consent roots, privacy spend, transcript CID, cosigners), the ledger
    (entries, heads, inclusion and consistency proofs), anchors, consent (records used per round
    and a receipt checker) and an audit run. Safe while the node runs: it never writes to the
    folder. Binds to 127.0.0.1 unless --host says otherwise."""
    serve(directory, port, host)
