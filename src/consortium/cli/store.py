"""`consortium store put|get|verify`: the node's content-addressed store from the shell."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from consortium.cli.common import console, err_console, fail, handle_errors
from consortium.core.errors import StoreError
from consortium.store import BlockStore, file_size, get_file, parse_cid, put_file

app = typer.Typer(help="Put, get and verify content-addressed blocks.", no_args_is_help=True)

#: Files at least this big get a progress bar (on a terminal only).
PROGRESS_MIN_BYTES = 16 * 1024 * 1024

DIR = typer.Option(Path("."), "--dir", help="Node or run folder; the store lives in DIR/store.")


def _store(directory: Path, *, create: bool) -> BlockStore:
    if not directory.is_dir():
        raise StoreError(f"--dir {directory} is not a folder")
    return BlockStore(directory / "store", create=create)


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None] | None]:
    if total < PROGRESS_MIN_BYTES or not err_console.is_terminal:
        yield None
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@app.command("put")
@handle_errors
def put(
    file: Path = typer.Argument(..., help="File to add."),
    directory: Path = DIR,
) -> None:
    """Add FILE to the store and print its CID."""
    if not file.is_file():
        fail(f"not a file: {file}", 2)
    store = _store(directory, create=True)
    with _progress("put", file.stat().st_size) as progress:
        cid = put_file(store, file, progress=progress)
    console.print(str(cid), highlight=False, soft_wrap=True)


@app.command("get")
@handle_errors
def get(
    cid: str = typer.Argument(..., help="CID to fetch."),
    out: Path = typer.Argument(..., help="Where to write the file (replaced atomically)."),
    directory: Path = DIR,
) -> None:
    """Write the file CID to OUT, re-hashing every block on the way."""
    parsed = parse_cid(cid)
    store = _store(directory, create=False)
    if not out.parent.is_dir():
        fail(f"folder does not exist: {out.parent}", 2)
    if out.is_dir():
        fail(f"OUT is a folder, give a file name: {out}", 2)
    with _progress("get", file_size(store, parsed)) as progress:
        get_file(store, parsed, out, progress=progress)
    err_console.print(f"wrote {out}", highlight=False)


@app.command("verify")
@handle_errors
def verify(directory: Path = DIR) -> None:
    """Re-hash every block; exit 1 naming the first bad one."""
    report = _store(directory, create=False).verify_report()
    if report.corrupt:
        fail(
            f"block {report.corrupt[0]} is corrupt "
            f"({len(report.corrupt)} corrupt, {len(report.stray)} stray of {report.checked})"
        )
    if report.stray:
        fail(f"stray file in store: {report.stray[0]} ({len(report.stray)} stray)")
    console.print(f"ok: {report.checked} blocks verified", highlight=False)
