"""`consortium store put|get|verify|export|import|serve|fetch|prove|challenge`: the node's store
from the shell. Files are UnixFS, with the CIDs kubo gives them; `export` and `import` move blocks
as CARv1, the file format every IPFS tool reads; `serve` and `fetch` speak the IPFS Trustless
Gateway protocol over HTTP; `prove` and `challenge` are the retrievability challenges' two sides."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from consortium.cli.common import console, err_console, fail, handle_errors
from consortium.core.errors import ProofError, StoreError
from consortium.core.genesis import GENESIS_FILE, Genesis
from consortium.core.layout import LEDGER_FILE, STORE_DIR
from consortium.ledger.log import Ledger
from consortium.protocol.storage import (
    ArtifactTree,
    HolderAnswer,
    challenge_indices,
    check_answer,
    leaf_count,
)
from consortium.store import (
    CID,
    PROFILES,
    BlockStore,
    Profile,
    as_cid,
    cid_key,
    file_size,
    get_bytes,
    get_file,
    parse_cid,
    profile,
    put_file,
)
from consortium.store.car import export_car, import_car
from consortium.store.fetch import DEFAULT_MAX_BYTES, fetch, gateway_url
from consortium.store.gateway import DEFAULT_HOST, DEFAULT_PORT, start_gateway
from consortium.store.objects import is_complete

app = typer.Typer(
    help="Put, get, verify, export and import content-addressed blocks.", no_args_is_help=True
)

#: Files at least this big get a progress bar (on a terminal only).
PROGRESS_MIN_BYTES = 16 * 1024 * 1024

DIR = typer.Option(Path("."), "--dir", help="Node or run folder; the store lives in DIR/store.")


def _store(directory: Path, *, create: bool) -> BlockStore:
    if not directory.is_dir():
        raise StoreError(f"--dir {directory} is not a folder")
    return BlockStore(directory / STORE_DIR, create=create)


def _profile(directory: Path, name: str | None) -> Profile:
    """`name`, else the consortium's profile from DIR/genesis.json, else the default."""
    if name is not None:
        return profile(name)
    if (directory / GENESIS_FILE).is_file():
        return profile(Genesis.load(directory / GENESIS_FILE).unixfs_profile)
    return profile(None)


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
    unixfs: str | None = typer.Option(
        None,
        "--profile",
        help=f"UnixFS profile: {', '.join(PROFILES)} (default: the consortium's, from "
        "DIR/genesis.json, else unixfs-v1-2025). unixfs-v0-2015 gives the CID of kubo's "
        "`ipfs add`, kubo-cid-v1 that of `ipfs add --cid-version 1`.",
    ),
) -> None:
    """Add FILE to the store as a UnixFS file and print its CID."""
    if not file.is_file():
        fail(f"not a file: {file}", 2)
    prof = _profile(directory, unixfs)
    store = _store(directory, create=True)
    with _progress("put", file.stat().st_size) as progress:
        cid = put_file(store, file, prof=prof, progress=progress)
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


@app.command("export")
@handle_errors
def export(
    directory: Path = typer.Argument(..., help="Node or run folder (its ledger and store)."),
    car: Path = typer.Option(..., "--car", help="The CAR file to write (replaced atomically)."),
    held: bool = typer.Option(
        False,
        "--held",
        help="Only the artifacts this folder holds whole (runs with replicas < members, where "
        "members drop what they do not hold); names the ones left out.",
    ),
) -> None:
    """Write a CARv1 holding every artifact the latest final tree head references.

    Its one root is an index (dag-cbor: consortium digest, head size and root, the artifacts'
    CIDs in ledger order) that links every artifact, so `ipfs dag import` pins the lot. With
    the folder's ledger.sqlite, the CAR is what an outside auditor needs (docs/architecture.md).
    """
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a folder")
    if car.is_dir():
        fail(f"--car is a folder, give a file name: {car}", 2)
    if not car.parent.is_dir():
        fail(f"folder does not exist: {car.parent}", 2)
    with Ledger.open(directory / LEDGER_FILE, readonly=True) as ledger:
        final = ledger.latest_final_head()
        size = final.head.size if final is not None else 1  # entry 0 is final by itself
        root = final.head.root if final is not None else ledger.root(1)
        digest = ledger.genesis().digest()
        artifacts: dict[str, tuple[CID, str]] = {}
        for idx, entry in enumerate(ledger.iter_entries(1, size), start=1):
            for ref in entry.references():
                cid = as_cid(ref)
                artifacts.setdefault(cid_key(cid), (cid, f"referenced by entry {idx}"))
    store = _store(directory, create=False)
    refs = list(artifacts.values())
    left_out = [c for c, _ in refs if held and not is_complete(store, c)]
    refs = [(c, where) for c, where in refs if c not in left_out]
    index = {
        "format": "consortium-car/v1",
        "consortium": digest,
        "size": size,
        "root": root,
        "artifacts": [c for c, _ in refs],
    }
    root_cid, blocks = export_car(store, car, index, refs)
    console.print(
        f"wrote {car}: {blocks} blocks, {len(refs)} artifacts referenced by the {size} entries "
        f"under the latest final head; root {root_cid}",
        highlight=False,
        soft_wrap=True,
    )
    if left_out:
        console.print(
            f"left out {len(left_out)} artifact(s) this folder does not hold: "
            + ", ".join(str(c) for c in left_out),
            highlight=False,
            soft_wrap=True,
        )


@app.command("import")
@handle_errors
def import_(
    file: Path = typer.Argument(..., help="A CARv1 file."),
    directory: Path = DIR,
) -> None:
    """Add every block of a CARv1 to the store, or none.

    Each block is checked against its CID (codec, hash, bytes) before any is added: a bad block,
    an unsupported codec or a truncated file adds nothing and is named in one error line.
    """
    if not file.is_file():
        fail(f"not a file: {file}", 2)
    report = import_car(_store(directory, create=True), file)
    roots = ", ".join(str(r) for r in report.roots) or "none"
    console.print(
        f"imported {file}: {report.blocks} blocks ({report.added} new); roots: {roots}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("serve")
@handle_errors
def serve(
    directory: Path = typer.Argument(..., help="Node or run folder; its store is served."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="TCP port (0: any free port)."),
    host: str = typer.Option(
        DEFAULT_HOST,
        "--host",
        help="Address to bind. The default serves this machine only; anything else lets every "
        "host that reaches it read every block in the store.",
    ),
) -> None:
    """Serve the store read-only as an IPFS Trustless Gateway until interrupted.

    `GET /ipfs/{cid}?format=raw` answers one block, `?format=car` (with `dag-scope`) a CARv1 of
    the DAG, as any IPFS client (Helia, kubo, verified-fetch) asks; nothing is deserialized or
    written. See docs/architecture.md, "The store".
    """
    if not directory.is_dir():
        raise StoreError(f"{directory} is not a folder")
    if not 0 <= port <= 65535:
        fail(f"--port {port} is not a TCP port (0 to 65535)", 2)
    store = _store(directory, create=False)

    async def main() -> None:
        runner, bound = await start_gateway(store, host, port)
        shown = f"[{host}]" if ":" in host else host
        console.print(
            f"serving {store.root} at http://{shown}:{bound}/ipfs/{{cid}} (Ctrl-C stops)",
            highlight=False,
            soft_wrap=True,
        )
        console.file.flush()  # a supervisor reading our stdout learns the port now
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())


@app.command("fetch")
@handle_errors
def fetch_(
    cid: str = typer.Argument(..., help="CID of the file or object to fetch, with all it links."),
    gateway: list[str] = typer.Option(
        ...,
        "--gateway",
        help="Base URL of a trustless gateway, e.g. http://127.0.0.1:8080 (repeat to try "
        "several in order).",
    ),
    directory: Path = DIR,
    car: bool = typer.Option(
        False, "--car", help="Ask for one CAR instead of block by block (fewer requests)."
    ),
    max_bytes: int = typer.Option(
        DEFAULT_MAX_BYTES, "--max-bytes", help="Refuse a fetch that brings in more bytes."
    ),
) -> None:
    """Fetch CID and every block it links from IPFS trustless gateways into the store.

    Each block is checked against its CID before any is added: a block that does not match, a
    truncated response, an unsupported codec or a CID no gateway holds adds nothing and is named
    in one error line.
    """
    parsed = parse_cid(cid)
    bases = [gateway_url(g) for g in gateway]  # before the store is created
    report = fetch(_store(directory, create=True), bases, parsed, car=car, max_bytes=max_bytes)
    console.print(
        f"fetched {report.root}: {report.blocks} blocks ({report.fetched} new, "
        f"{report.bytes} bytes)",
        highlight=False,
        soft_wrap=True,
    )


# -- retrievability challenges (docs/architecture.md, "Replication with retrievability challenges")


def _beacon(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ProofError(
            f"--beacon must be 64 hex digits (the round's attempt beacon), not {text!r}"
        )
    return value


BEACON = typer.Option(..., "--beacon", help="The challenging round's attempt beacon (64 hex).")
HOLDER = typer.Option(..., "--holder", help="Member id of the holder challenged.")


@app.command("prove")
@handle_errors
def prove(
    cid: str = typer.Argument(..., help="CID of the artifact (a UnixFS file) to prove."),
    beacon: str = BEACON,
    holder: str = HOLDER,
    directory: Path = DIR,
) -> None:
    """Answer a challenge: print, as JSON, an inclusion proof of each leaf the beacon picks.

    The artifact is read from DIR's store (every block re-hashed), cut into 32-byte leaves, and
    each challenged leaf is proved against the Merkle root over them.
    """
    parsed = parse_cid(cid)
    value = _beacon(beacon)
    tree = ArtifactTree(get_bytes(_store(directory, create=False), parsed))
    indices = challenge_indices(value, str(parsed), holder, tree.leaves)
    answer = HolderAnswer(str(parsed), holder, tuple(tree.prove(i) for i in indices))
    body = {"beacon": beacon.lower(), **_hex(answer.to_body())}
    console.print(json.dumps(body), highlight=False, soft_wrap=True, markup=False)


def _hex(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _hex(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hex(v) for v in value]
    return value


def _answer(path: Path) -> HolderAnswer:
    """A holder's answer from the JSON `prove` prints (hostile input: shape-checked)."""
    try:
        body = json.loads(path.read_text())
        proofs = [
            {
                "index": p["index"],
                "leaf": bytes.fromhex(p["leaf"]),
                "path": [bytes.fromhex(h) for h in p["path"]],
            }
            for p in body["proofs"]
        ]
        return HolderAnswer.from_body(
            {
                "artifact": body["artifact"],
                "holder": body["holder"],
                "proofs": proofs,
                "signature": bytes.fromhex(body.get("signature", "")),
            }
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProofError(f"{path} is not an answer printed by `store prove` ({exc})") from None


@app.command("challenge")
@handle_errors
def challenge(
    cid: str = typer.Argument(..., help="CID of the artifact challenged."),
    beacon: str = BEACON,
    holder: str = HOLDER,
    answer: Path | None = typer.Option(
        None, "--answer", help="The holder's answer (JSON from `store prove`) to check."
    ),
    root: str | None = typer.Option(
        None, "--root", help="The committed Merkle root (64 hex); default: from DIR's own copy."
    ),
    size: int | None = typer.Option(None, "--size", help="The committed size, with --root."),
    directory: Path = DIR,
) -> None:
    """Print the leaves the beacon challenges HOLDER to prove of CID; with --answer, check them.

    The committed root and size come from --root/--size (as a round record will carry them) or
    from the artifact in DIR's store. A wrong or missing proof exits 1 naming the leaf.
    """
    parsed = parse_cid(cid)
    value = _beacon(beacon)
    if (root is None) != (size is None):
        fail("give --root and --size together, or neither (then DIR's copy is used)", 2)
    if root is not None and size is not None:
        committed, length = _beacon(root), size
        if size < 0:
            fail(f"--size {size} is negative", 2)
    else:
        tree = ArtifactTree(get_bytes(_store(directory, create=False), parsed))
        committed, length = tree.root, tree.size
    indices = challenge_indices(value, str(parsed), holder, leaf_count(length))
    if answer is None:
        console.print(" ".join(map(str, indices)), highlight=False)
        return
    if not answer.is_file():
        fail(f"not a file: {answer}", 2)
    got = _answer(answer)
    if (got.artifact, got.holder) != (str(parsed), holder):
        raise ProofError(
            f"{answer} answers for {got.holder} on {got.artifact}, not {holder} on {parsed}"
        )
    try:
        check_answer(committed, length, indices, got.proofs)
    except ProofError as exc:
        raise ProofError(f"{holder} failed the challenge on {parsed}: {exc}") from None
    console.print(
        f"ok: {holder} proved leaves {' '.join(map(str, indices))} of {parsed}",
        highlight=False,
        soft_wrap=True,
    )
