"""A read-only IPFS Trustless Gateway over the block store (https://specs.ipfs.tech/http-gateways/
trustless-gateway/), so any IPFS client (Helia, kubo, verified-fetch in a browser) can fetch and
verify the run's artifacts by CID.

    GET|HEAD /ipfs/{cid}?format=raw     (or Accept: application/vnd.ipld.raw)  one block
    GET|HEAD /ipfs/{cid}?format=car     (or Accept: application/vnd.ipld.car)  a CARv1 stream
             &dag-scope=block|entity|all  &car-dups=n|y  &car-order=dfs|unk  &car-version=1

The format comes from `format` (which takes precedence, as the spec says) or else from `Accept`;
neither gives 400 (strict trustless mode: no deserialized responses) and an Accept naming only
other types 406. A CID that does not parse, uses another hash or a codec the store does not hold
(only sha2-256 `raw`, `dag-pb`, `dag-cbor`) is 400 naming it; one the store lacks is 404; a path
under the CID, `entity-bytes` or another CAR variant is 400 (we serve whole DAGs by CID only).
`bafkqaaa`, the empty identity CID, answers the spec's probe. Every block is re-hashed as it is
read (`BlockStore.get_block`), so a damaged copy is a 500 naming it, never served.

CARs are written depth first (`order=dfs`) in the order `ipfs dag export` writes, each block once
(`dups=n`, or each time it occurs with `dups=y`); `dag-scope=entity` of a dag-cbor object is its
one block, of a UnixFS file the whole file. Once a CAR has started streaming the status is sent,
so a block found missing or damaged half-way ends the response early: the CAR is truncated and
every client (ours included, `store/fetch.py`) refuses it.

aiohttp (already pinned: web3 needs it) serves it; the node runs it in its own event loop.
Requests are GET and HEAD only; request lines and headers are bounded by aiohttp (8 KiB).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from multiformats import CID

from consortium.core.errors import ConsortiumError, IntegrityError, NotFoundError, StoreError
from consortium.store.blockstore import BlockStore
from consortium.store.car import car_header, car_section
from consortium.store.cid import as_cid, cid_key
from consortium.store.objects import links_of

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
#: The identity CID of no bytes: the spec's probe for "is this a trustless gateway".
PROBE_CID = "bafkqaaa"
#: Content addressed and so immutable: cache for a year (as kubo does).
CACHE = "public, max-age=29030400, immutable"
SCOPES = ("block", "entity", "all")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

log = logging.getLogger(__name__)


class BadRequest(Exception):
    """A request we answer with a 4xx: its status and one line naming what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Want:
    """What a request asks for, once its URL and headers are checked."""

    cid: CID
    car: bool
    scope: str = "all"
    dups: bool = False


def _media(accept: str) -> list[tuple[str, dict[str, str], float]]:
    """(type, params, q) of each entry of an Accept header, best first (RFC 9110 12.5.1)."""
    out = []
    for i, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        params = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        out.append((fields[0].lower(), params, q, i))
    out.sort(key=lambda m: (-m[2], m[3]))
    return [(t, p, q) for t, p, q, _ in out if q > 0]


def parse_request(
    cid_text: str, path: str, query: dict[str, str], accept: str | None
) -> Want | None:
    """Check a request; its `Want`, None for the probe CID, or BadRequest (4xx) saying why."""
    fmt = query.get("format")
    params: dict[str, str] = {}
    if fmt is not None:
        if fmt not in ("raw", "car"):
            raise BadRequest(400, f"format={fmt} is not served here: use format=raw or format=car")
        car = fmt == "car"
        for m, p, _ in _media(accept or ""):
            if m == (CAR_TYPE if car else RAW_TYPE):
                params = p
                break
    else:
        if not accept:
            raise BadRequest(
                400,
                "a trustless gateway needs ?format=raw|car or an Accept header "
                f"({RAW_TYPE} or {CAR_TYPE}); it returns no deserialized files",
            )
        chosen = next((m for m in _media(accept) if m[0] in (RAW_TYPE, CAR_TYPE)), None)
        if chosen is None:
            raise BadRequest(406, f"Accept: {accept[:200]} names neither {RAW_TYPE} nor {CAR_TYPE}")
        car, params = chosen[0] == CAR_TYPE, chosen[1]
    if path:
        raise BadRequest(400, f"paths under a CID are not served here (/{path[:200]}): ask by CID")
    if cid_text == PROBE_CID:
        return None
    try:
        cid = as_cid(cid_text)
    except StoreError as exc:
        raise BadRequest(400, str(exc)) from None
    if not car:
        extra = sorted(k for k in query if k.startswith(("dag-scope", "entity-bytes", "car-")))
        if extra:
            raise BadRequest(400, f"{extra[0]} applies to CAR responses only, not format=raw")
        return Want(cid, car=False)
    if "entity-bytes" in query:
        raise BadRequest(400, "entity-bytes is not supported: ask for the whole DAG")
    scope = query.get("dag-scope", "all")
    if scope not in SCOPES:
        raise BadRequest(400, f"dag-scope={scope[:50]} is not one of {', '.join(SCOPES)}")
    version = query.get("car-version", params.get("version", "1"))
    if version != "1":
        raise BadRequest(400, f"CAR version {version[:20]} is not served here, only version=1")
    order = query.get("car-order", params.get("order", "dfs"))
    if order not in ("dfs", "unk"):
        raise BadRequest(400, f"CAR order={order[:20]} is not served here: dfs or unk")
    dups = query.get("car-dups", params.get("dups", "n"))
    if dups not in ("y", "n"):
        raise BadRequest(400, f"CAR dups={dups[:20]} must be y or n")
    return Want(cid, car=True, scope=scope, dups=dups == "y")


def car_blocks(store: BlockStore, want: Want) -> Iterator[tuple[CID, bytes]]:
    """The blocks of `want`'s CAR, depth first, parents before children, each re-hashed."""
    seen: set[str] = set()
    stack = [want.cid]
    while stack:
        cid = stack.pop()
        key = cid_key(cid)
        if key in seen and not want.dups:
            continue
        seen.add(key)
        block = store.get_block(cid)
        yield cid, block
        if want.scope == "block" or (want.scope == "entity" and cid.codec.name == "dag-cbor"):
            continue
        stack.extend(reversed(links_of(cid, block)))


def _headers(car: bool, cid_text: str, scope: str = "all", dups: bool = False) -> dict[str, str]:
    headers = {
        "Cache-Control": CACHE,
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept",
        "X-Ipfs-Path": f"/ipfs/{cid_text}",
        "X-Ipfs-Roots": cid_text,
    }
    if car:
        flag = "y" if dups else "n"
        headers["Content-Type"] = f"{CAR_TYPE}; version=1; order=dfs; dups={flag}"
        headers["Content-Disposition"] = f'attachment; filename="{cid_text}.car"'
        headers["Etag"] = f'"{cid_text}.car.{scope}.dfs.{flag}"'
    else:
        headers["Content-Type"] = RAW_TYPE
        headers["Content-Disposition"] = f'attachment; filename="{cid_text}.bin"'
        headers["Etag"] = f'"{cid_text}.raw"'
    return headers


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status,
        text=message + "\n",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


def _wants_car(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        return fmt == "car"
    return next((m for m, _, _ in _media(request.headers.get("Accept") or "")), "") == CAR_TYPE


def make_app(store: BlockStore) -> web.Application:
    """The gateway as an aiohttp application over `store` (read only: GET and HEAD)."""

    async def ipfs(request: web.Request) -> web.StreamResponse:
        cid_text = request.match_info["cid"]
        try:
            want = parse_request(
                cid_text,
                request.match_info.get("path", ""),
                dict(request.query),
                request.headers.get("Accept"),
            )
        except BadRequest as exc:
            return _error(exc.status, str(exc))
        head = request.method == "HEAD"
        if want is None:  # the probe: an empty block, or a CAR of no blocks rooted at it
            car = _wants_car(request)
            body = car_header([CID.decode(PROBE_CID)]) if car else b""
            return web.Response(body=None if head else body, headers=_headers(car, PROBE_CID))
        printed = str(want.cid)
        headers = _headers(want.car, printed, want.scope, want.dups)
        try:
            # Disk reads and hashing run in a worker thread: a node serving its store keeps its
            # event loop (and so its rounds) free while a large CAR streams.
            block = await asyncio.to_thread(store.get_block, want.cid)
            if not want.car:
                headers["Content-Length"] = str(len(block))
                return web.Response(body=None if head else block, headers=headers)
            # a CAR: its root is there and whole before we say 200
        except NotFoundError:
            return _error(404, f"block {printed} is not in this gateway's store")
        except IntegrityError as exc:
            return _error(500, f"{exc}; this gateway will not serve it")
        if head:
            return web.Response(headers=headers)
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(car_header([want.cid]))
        blocks = car_blocks(store, want)
        try:
            while (item := await asyncio.to_thread(next, blocks, None)) is not None:
                cid, block = item
                await response.write(car_section(cid, block) + block)
        except ConsortiumError as exc:
            # The status is sent: end the stream short, which every CAR reader refuses (the
            # spec's rule for a child block missing half-way), and say why in the log.
            log.warning("gateway: CAR of %s cut short: %s", printed, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/ipfs/{cid}", ipfs, allow_head=True)
    app.router.add_get("/ipfs/{cid}/{path:.*}", ipfs, allow_head=True)
    return app  # aiohttp answers 405 to any other method


async def start_gateway(
    store: BlockStore, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> tuple[web.AppRunner, int]:
    """Start serving `store` on host:port (0 picks a free port); the runner (call its
    `cleanup()` to stop) and the port bound."""
    runner = web.AppRunner(make_app(store), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise StoreError(
            f"cannot serve the store on {host}:{port}: {exc.strerror or exc}"
        ) from None
    bound = port
    for address in runner.addresses:  # (host, port, ...) of each socket bound
        bound = int(address[1])
    return runner, bound
