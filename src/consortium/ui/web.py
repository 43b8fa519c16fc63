"""`consortium ui DIR`: a local, read-only web dashboard over a node (or run) folder.

Starlette serves pages rendered by the one renderer (`ui.report`, the templates of the static
report) from what `ui.overview` reads: the run, each round, the ledger (entries, heads,
inclusion and consistency proofs on demand), the anchors, consent (records used per round and a
receipt checker) and an audit run. No script runs in its pages (the Content-Security-Policy
forbids any), nothing is fetched from anywhere, and it binds to 127.0.0.1 unless told otherwise.

Read only, while the node writes: the ledger is opened `query_only` per request (one
`FolderReader` is kept, so each request parses only the entries appended since the last), the
embedded chain's record read-only; never the writer lock, never a new file. Keys, salts,
pseudonyms and record ids are never shown: the folder's pages hold commitments and counts, and a
receipt posted to the checker is checked and dropped (only the verdicts are shown).

Bad input (a folder that is not a node folder, a malformed receipt or query, an unknown round)
is a page with one clear line and an HTTP 4xx; any other failure a 500 page without a
traceback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

# Starlette parses posted forms (a receipt, an upload) with python-multipart: imported here so
# that a missing install fails when the dashboard loads, not at the first receipt posted.
import python_multipart  # noqa: F401
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consortium.consent import ConsentError, Receipt
from consortium.core.errors import ConfigError, ConsortiumError, ProofError
from consortium.core.layout import LEDGER_FILE
from consortium.ledger import merkle
from consortium.ledger.entries import Entry
from consortium.ledger.log import Ledger
from consortium.node.run_status import ACCURACY_NOT_PUBLISHED, FolderReader, node_folder
from consortium.ui import report as renderer
from consortium.ui.overview import Anchors, Overview, audit_result, read_anchors, read_overview
from consortium.ui.report import (
    Cell,
    Facts,
    Field,
    Form,
    Link,
    Page,
    Paragraph,
    Section,
    Table,
)
from consortium.ui.run_report import (
    anchors_blocks,
    audit_blocks,
    consent_table,
    epsilon_chart,
    record_section,
    round_facts,
    rounds_table,
    run_facts,
    verdict_table,
)

log = logging.getLogger(__name__)

NAV = (
    Link("Run", "/"),
    Link("Ledger", "/ledger"),
    Link("Anchors", "/anchors"),
    Link("Consent", "/consent"),
    Link("Audit", "/audit"),
)
#: No script, no frame, nothing from elsewhere; forms post only to the dashboard itself.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
ENTRIES_PER_PAGE = 50
MAX_RECEIPT_BYTES = 16 * 1024 * 1024


class BadRequest(ConsortiumError):
    """Input the dashboard refuses (HTTP 400)."""


class NotFound(ConsortiumError):
    """No such folder, round or entry (HTTP 404)."""


class _Folder:
    """The folder the dashboard shows, read again on each request (cheap: incremental)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._reader: FolderReader | None = None
        self._lock = threading.Lock()
        self._anchors: tuple[tuple[int, int], Anchors] | None = None

    def reader(self) -> FolderReader:
        if self._reader is None:
            try:
                self._reader = FolderReader(node_folder(self.directory))
            except ConfigError as exc:
                raise NotFound(str(exc)) from exc
        return self._reader

    def overview(self) -> Overview:
        with self._lock:
            reader = self.reader()
            ov = read_overview(reader.dir, reader=reader, anchors=False)
            return replace(ov, anchors=self._read_anchors(reader.dir))

    def _read_anchors(self, folder: Path) -> Anchors:
        """Anchors, read again only when the chain's record changed (a replay costs seconds)."""
        record = folder / "chain" / "chain.sqlite"
        try:
            st = record.stat()
            key = (st.st_size, st.st_mtime_ns)
        except OSError:
            key = (-1, -1)
        wal = record.with_name(record.name + "-wal")
        if wal.exists():
            key = (key[0] + wal.stat().st_size, max(key[1], wal.stat().st_mtime_ns))
        if self._anchors is None or self._anchors[0] != key:
            self._anchors = (key, read_anchors(folder))
        return self._anchors[1]

    def ledger(self) -> Ledger:
        return Ledger.open(self.reader().dir / LEDGER_FILE, readonly=True)


def _page(title: str, sections: Sequence[Section], subtitle: str = "") -> Page:
    return Page(title, sections, subtitle=subtitle, links=NAV)


def _html(page: Page, status: int = 200) -> HTMLResponse:
    return HTMLResponse(renderer.render(page), status_code=status)


def _error(status: int, message: str) -> HTMLResponse:
    title = {400: "Bad request", 404: "Not found"}.get(status, "Error")
    return _html(_page(title, [Section(title, [Paragraph(message, "warning")])]), status)


def _int(request: Request, name: str, *, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"give {name} (a whole number)")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if value < 0:
        raise BadRequest(f"{name} must not be negative")
    return value


# -- pages -------------------------------------------------------------------------------------


def _title(ov: Overview) -> str:
    return f"{ov.status.consortium}: run {ov.status.run}"


def run_page(folder: _Folder, request: Request) -> Page:
    ov = folder.overview()
    return _page(
        _title(ov),
        [
            Section("Run", [run_facts(ov)]),
            Section(
                "Progress",
                [
                    epsilon_chart(ov),
                    Paragraph(f"Accuracy curve: {ACCURACY_NOT_PUBLISHED}.", "note"),
                ],
            ),
            Section("Rounds", [rounds_table(ov, links=True)]),
            record_section(ov),
        ],
        subtitle=f"purpose {ov.status.config.purpose} · {ov.status.state}",
    )


def round_page(folder: _Folder, request: Request) -> Page:
    raw = request.path_params["number"]
    try:
        number = int(raw)
    except ValueError:
        raise NotFound(f"no round {raw[:40]!r}: rounds are numbered 1, 2, …") from None
    ov = folder.overview()
    try:
        r = ov.round(number)
    except ConsortiumError as exc:
        raise NotFound(str(exc)) from None
    return _page(
        f"Round {r.round} of run {r.run}",
        [Section(f"Round {r.round}", round_facts(ov, r))],
        subtitle=f"{ov.status.consortium} · leader {ov.name(r.leader)}",
    )


def _entries_table(ledger: Ledger, names: dict[str, str], start: int) -> Table:
    rows: list[list[Cell]] = []
    for idx, data in ledger.raw_entries(start, min(start + ENTRIES_PER_PAGE, ledger.size)):
        e = Entry.from_bytes(data)
        rows.append(
            [
                idx,
                e.kind,
                names.get(e.author, e.author[:16]) if e.author else "-",
                e.time,
                ", ".join(sorted(names.get(s, s[:16]) for s in e.signatures)) or "-",
                merkle.leaf_hash(data).hex(),
            ]
        )
    return Table(
        ["entry", "kind", "author", "time (ms)", "signed by", "leaf hash"],
        rows,
        caption=f"Entries {start} to {start + len(rows) - 1} of {ledger.size}.",
    )


def ledger_page(folder: _Folder, request: Request) -> Page:
    ov = folder.overview()
    start = _int(request, "start", default=0)
    names = dict(ov.status.members)
    with folder.ledger() as ledger:
        size = ledger.size
        if start >= max(size, 1):
            raise NotFound(f"no entry {start}: the ledger has {size} entries")
        root = ledger.root()
        entries = _entries_table(ledger, names, start)
    heads = Table(
        ["size", "root", "time (ms)", "cosigned by", "final"],
        [
            [
                h.size,
                h.root.hex(),
                h.time,
                ", ".join(sorted(names.get(s, s) for s in h.signers)),
                h.final,
            ]
            for h in ov.heads
        ],
        caption=f"Tree heads stored by this node; final: cosigned by a quorum of "
        f"{ov.genesis.quorum}.",
    )
    pages: list[Link] = []
    if start > 0:
        pages.append(Link("earlier entries", f"/ledger?start={max(0, start - ENTRIES_PER_PAGE)}"))
    if start + ENTRIES_PER_PAGE < size:
        pages.append(Link("later entries", f"/ledger?start={start + ENTRIES_PER_PAGE}"))
    nav = [Table(["more"], [[p] for p in pages])] if pages else []
    return _page(
        "Ledger",
        [
            Section("Ledger", [Facts([("entries", str(size)), ("root", root.hex())])]),
            Section(
                "Proofs",
                [
                    Form(
                        "/ledger/inclusion",
                        [
                            Field("index", "entry", "number"),
                            Field("size", "in the tree of size", "number", str(size)),
                        ],
                        "Prove inclusion",
                    ),
                    Form(
                        "/ledger/consistency",
                        [
                            Field("old", "the tree of size", "number"),
                            Field("new", "extends into the tree of size", "number", str(size)),
                        ],
                        "Prove consistency",
                    ),
                ],
            ),
            Section("Tree heads", [heads]),
            Section("Entries", [entries, *nav]),
        ],
        subtitle=f"{ov.status.consortium} · {size} entries",
    )


def inclusion_page(folder: _Folder, request: Request) -> Page:
    index = _int(request, "index")
    with folder.ledger() as ledger:
        size = _int(request, "size", default=ledger.size)
        if size > ledger.size or index >= size:
            raise BadRequest(
                f"entry {index} is not in a tree of size {size} (the ledger has {ledger.size} "
                "entries)"
            )
        leaf = merkle.leaf_hash(ledger.entry_bytes(index))
        root = ledger.root(size)
        proof = ledger.inclusion_proof(index, size)
    try:
        merkle.verify_inclusion(index, size, leaf, proof, root)
        verdict = Paragraph(f"Verified: entry {index} is in the tree of size {size}.", "ok")
    except ProofError as exc:
        verdict = Paragraph(f"The proof does not verify: {exc}", "warning")
    return _page(
        f"Inclusion of entry {index}",
        [
            Section(
                "Inclusion proof (RFC 9162)",
                [
                    verdict,
                    Facts(
                        [
                            ("entry", str(index)),
                            ("tree size", str(size)),
                            ("leaf hash", leaf.hex()),
                            ("root", root.hex()),
                        ]
                    ),
                    Table(["#", "hash"], [[i, h.hex()] for i, h in enumerate(proof)]),
                ],
            )
        ],
    )


def consistency_page(folder: _Folder, request: Request) -> Page:
    old = _int(request, "old")
    with folder.ledger() as ledger:
        new = _int(request, "new", default=ledger.size)
        if not 0 < old <= new <= ledger.size:
            raise BadRequest(
                f"give 0 < old ≤ new ≤ {ledger.size} (the ledger's size), got old {old}, new {new}"
            )
        old_root, new_root = ledger.root(old), ledger.root(new)
        proof = ledger.consistency_proof(old, new)
    try:
        merkle.verify_consistency(old, new, old_root, new_root, proof)
        verdict = Paragraph(
            f"Verified: the tree of size {new} extends the tree of size {old}.", "ok"
        )
    except ProofError as exc:
        verdict = Paragraph(f"The proof does not verify: {exc}", "warning")
    return _page(
        f"Consistency of sizes {old} and {new}",
        [
            Section(
                "Consistency proof (RFC 9162)",
                [
                    verdict,
                    Facts(
                        [
                            ("old size", str(old)),
                            ("old root", old_root.hex()),
                            ("new size", str(new)),
                            ("new root", new_root.hex()),
                        ]
                    ),
                    Table(["#", "hash"], [[i, h.hex()] for i, h in enumerate(proof)]),
                ],
            )
        ],
    )


def anchors_page(folder: _Folder, request: Request) -> Page:
    ov = folder.overview()
    return _page("Anchors", [Section("Anchors", anchors_blocks(ov))])


RECEIPT_FORM = Form(
    "/consent/check",
    [
        Field("receipt", "Paste a receipt (JSON)", "textarea"),
        Field("file", "or upload the receipt file", "file"),
    ],
    "Check the receipt",
    method="post",
)


def consent_page(folder: _Folder, request: Request) -> Page:
    ov = folder.overview()
    return _page(
        "Consent",
        [
            Section("Records used per round", [consent_table(ov)]),
            Section(
                "Check a receipt",
                [
                    Paragraph(
                        "A data subject's receipt (from `consortium consent receipt`) is checked "
                        "against the consent roots on this ledger: per round, used or not used. "
                        "The receipt is not stored; only the verdicts are shown."
                    ),
                    RECEIPT_FORM,
                ],
            ),
        ],
    )


async def _receipt_text(request: Request) -> str:
    form = await request.form(max_part_size=MAX_RECEIPT_BYTES)
    upload = form.get("file")
    text = ""
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the uploaded receipt is not UTF-8 text") from None
    pasted = form.get("receipt")
    if not text and isinstance(pasted, str):
        text = pasted
    if not text.strip():
        raise BadRequest("paste a receipt or choose its file")
    return text


async def check_page(folder: _Folder, request: Request) -> Page:
    text = await _receipt_text(request)
    try:
        receipt = Receipt.loads(text)
    except ConsentError as exc:
        raise BadRequest(f"this is not a valid receipt: {exc}") from None
    ov = folder.overview()
    try:
        verdicts = ov.check_receipt(receipt)
    except ConsortiumError as exc:
        raise BadRequest(f"this receipt cannot be checked here: {exc}") from None
    bad = [v for v in verdicts if v.status == "invalid"]
    used = sorted({v.round for v in verdicts if v.status == "used"})
    summary = (
        Paragraph(
            f"{len(bad)} proof(s) do not match the ledger: this receipt is not consistent with "
            f"what {ov.name(receipt.node)} published.",
            "warning",
        )
        if bad
        else Paragraph(
            f"Verified against the ledger: records used at ledger entries "
            f"{', '.join(map(str, used)) or 'none'}.",
            "ok",
        )
    )
    return _page(
        "Receipt check",
        [
            Section(
                "Verdicts",
                [
                    summary,
                    Facts([("node", f"{ov.name(receipt.node)} ({receipt.node})")]),
                    verdict_table(ov, verdicts),
                ],
            ),
            Section("Check another", [RECEIPT_FORM]),
        ],
    )


AUDIT_FORM = Form("/audit", [], "Run the audit", method="post")


def audit_page(folder: _Folder, request: Request) -> Page:
    folder.reader()  # a folder that is not a node folder says so here
    return _page(
        "Audit",
        [
            Section(
                "Audit",
                [
                    Paragraph(
                        "Runs `consortium audit` on the folder: every signature, head, artifact, "
                        "round record, anchor and the consent registry re-verified (a few "
                        "seconds per hundred entries)."
                    ),
                    AUDIT_FORM,
                ],
            )
        ],
    )


def audit_run_page(folder: _Folder, request: Request) -> Page:
    result = audit_result(folder.reader().dir)
    return _page("Audit", [Section("Audit result", [*audit_blocks(result), AUDIT_FORM])])


# -- the app -----------------------------------------------------------------------------------

Handler = Callable[[_Folder, Request], Page]


def _sync(folder: _Folder, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return _html(await run_in_threadpool(handler, folder, request))

    return endpoint


def _async(
    folder: _Folder, handler: Callable[[_Folder, Request], Awaitable[Page]]
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return _html(await handler(folder, request))

    return endpoint


async def _consortium_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFound):
        return _error(404, str(exc))
    return _error(400, str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, f"no page {request.url.path[:80]!r} here")
    return _error(exc.status_code, str(exc.detail))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("dashboard error on %s: %r", request.url.path, exc)
    return _error(500, "the dashboard could not read the folder for this page; see its log")


class _Headers:
    """Security headers on every response (pages, errors): no script, no framing, no cache."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(directory: Path) -> Starlette:
    """The dashboard over `directory` (a node folder, or a run folder of node folders)."""
    folder = _Folder(directory)
    return Starlette(
        routes=[
            Route("/", _sync(folder, run_page)),
            Route("/round/{number}", _sync(folder, round_page)),
            Route("/ledger", _sync(folder, ledger_page)),
            Route("/ledger/inclusion", _sync(folder, inclusion_page)),
            Route("/ledger/consistency", _sync(folder, consistency_page)),
            Route("/anchors", _sync(folder, anchors_page)),
            Route("/consent", _sync(folder, consent_page)),
            Route("/consent/check", _async(folder, check_page), methods=["POST"]),
            Route("/audit", _sync(folder, audit_page)),
            Route("/audit", _sync(folder, audit_run_page), methods=["POST"]),
        ],
        exception_handlers={
            ConsortiumError: _consortium_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        middleware=[Middleware(_Headers)],
    )
