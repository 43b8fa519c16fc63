"""Fetch a DAG from any IPFS Trustless Gateway into the store, verifying every block first.

Two ways, both in the trustless gateway spec:

- block by block (the default; every trustless gateway serves it): `GET /ipfs/{cid}?format=raw`
  for the root, then for each link of each block, a few at a time, trying the gateways in order
  (a 404 or an unreachable gateway passes to the next);
- one CAR (`car=True`): `GET /ipfs/{cid}?format=car&dag-scope=all`, read with the CAR reader.

Every block is checked before it is kept: its bytes against its CID (sha2-256 only), its size
(at most `MAX_BLOCK_SIZE`, read no further), its form (dag-pb and dag-cbor decode, links name
only codecs the store holds), and the whole fetch against `max_bytes`. Verified blocks go to a
staging folder beside `blocks` (as a CAR import's do); only when every block reachable from the
root is there or already in the store are they added. So a block that does not match its CID, a
truncated response, an unsupported codec or a CID no gateway holds adds nothing, and the error
names the block and the gateway. Blocks the store already holds are read (re-hashed) rather than
fetched. Blocks a CAR carries that the DAG does not reach are ignored, as the spec asks.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from consortium.core.encoding import decode
from consortium.core.errors import ConsortiumError, EncodingError, NotFoundError, StoreError
from consortium.store.blockstore import MAX_BLOCK_SIZE, STAGING_PREFIX, BlockStore
from consortium.store.car import read_car
from consortium.store.cid import CID, as_cid, cid_key
from consortium.store.dagpb import decode_node
from consortium.store.gateway import CAR_TYPE, RAW_TYPE
from consortium.store.objects import links_of

#: Default cap on the bytes one fetch may bring in (every block counted).
DEFAULT_MAX_BYTES = 4 * 1024**3
#: Requests in flight at once, block by block.
PARALLEL = 8
DEFAULT_TIMEOUT = 60.0


@dataclass
class FetchReport:
    root: CID
    blocks: int = 0  # blocks of the DAG
    fetched: int = 0  # of them, blocks the store lacked (fetched and then added)
    bytes: int = 0  # bytes fetched


def gateway_url(text: str) -> str:
    """Check a gateway's base URL (http or https, a host, no query); without its trailing /."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise StoreError(f"gateway {text!r} is not an http(s) URL such as http://127.0.0.1:8080")
    return text.strip().rstrip("/")


def _check_block(cid: CID, data: bytes, where: str) -> list[CID]:
    """StoreError unless `data` is block `cid`; its links (each a CID the store accepts)."""
    if hashlib.sha256(data).digest() != bytes(cid.raw_digest):
        raise StoreError(f"block {cid} from {where} does not match its CID")
    try:
        if cid.codec.name == "dag-cbor":
            decode(data)
        elif cid.codec.name == "dag-pb":
            decode_node(data)
        return links_of(cid, data)
    except (EncodingError, StoreError) as exc:
        raise StoreError(f"block {cid} from {where}: {exc}") from None


class _Fetch:
    def __init__(
        self,
        store: BlockStore,
        staging: Path,
        gateways: list[str],
        max_bytes: int,
        session: aiohttp.ClientSession,
    ) -> None:
        self.store, self.staging, self.gateways = store, staging, gateways
        self.max_bytes, self.session = max_bytes, session
        self.staged: dict[str, CID] = {}
        self.bytes = 0

    def _count(self, n: int, what: str) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise StoreError(f"{what}: the fetch passed its limit of {self.max_bytes} bytes")

    def stage(self, cid: CID, data: bytes) -> None:
        key = cid_key(cid)
        if key not in self.staged:
            (self.staging / key).write_bytes(data)
            self.staged[key] = cid

    def staged_block(self, cid: CID) -> bytes | None:
        key = cid_key(cid)
        return (self.staging / key).read_bytes() if key in self.staged else None

    async def _get(self, url: str, accept: str, limit: int) -> tuple[int, bytes, str]:
        async with self.session.get(url, headers={"Accept": accept}) as resp:
            if resp.status != 200:
                why = (await resp.content.read(300)).strip()
                return resp.status, why.splitlines()[0] if why else b"", ""
            parts, got = [], 0
            while got <= limit:  # read() returns what is buffered: loop to the end or the limit
                part = await resp.content.read(limit + 1 - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            return 200, b"".join(parts), resp.headers.get("Content-Type", "")

    async def block(self, cid: CID) -> tuple[bytes, list[CID]]:
        """Block `cid` from the first gateway that has it, verified; and its links."""
        answers = []
        for base in self.gateways:
            url = f"{base}/ipfs/{cid}?format=raw"
            try:
                status, body, _ = await self._get(url, RAW_TYPE, MAX_BLOCK_SIZE)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                answers.append(f"{base}: {type(exc).__name__} {exc}".strip())
                continue
            if status != 200:
                answers.append(f"{base}: HTTP {status} {body.decode('utf-8', 'replace')}".strip())
                continue
            if len(body) > MAX_BLOCK_SIZE:
                raise StoreError(f"block {cid} from {base} is over {MAX_BLOCK_SIZE} bytes")
            self._count(len(body), f"block {cid} from {base}")
            return body, _check_block(cid, body, base)
        raise NotFoundError(f"no gateway gave block {cid} ({'; '.join(answers)})")

    async def by_blocks(self, root: CID) -> int:
        """Fetch every block under `root` the store lacks; the number of blocks in the DAG."""
        seen: set[str] = set()
        frontier = [root]
        total = 0
        while frontier:
            batch, frontier = frontier[:PARALLEL], frontier[PARALLEL:]
            todo = []
            for cid in batch:
                key = cid_key(cid)
                if key in seen:
                    continue
                seen.add(key)
                total += 1
                todo.append(cid)
            local = [c for c in todo if self.store.has(c)]
            remote = [c for c in todo if not self.store.has(c)]
            # every request ends (answered, refused or timed out) before the first error is
            # raised: no request outlives the fetch
            answers = await asyncio.gather(*(self.block(c) for c in remote), return_exceptions=True)
            failed = [a for a in answers if isinstance(a, BaseException)]
            if failed:
                raise failed[0]
            blocks = [a for a in answers if not isinstance(a, BaseException)]
            for cid, (data, links) in zip(remote, blocks, strict=True):
                self.stage(cid, data)
                frontier.extend(links)
            for cid in local:
                frontier.extend(links_of(cid, self.store.get_block(cid)))
        return total

    async def by_car(self, root: CID) -> int:
        """Fetch `root`'s DAG as one CAR from the first gateway that serves it; the number of
        blocks in the DAG."""
        answers = []
        for base in self.gateways:
            url = f"{base}/ipfs/{root}?format=car&dag-scope=all"
            accept = f"{CAR_TYPE}; version=1; order=dfs; dups=n"
            try:
                return await self._car_from(base, url, accept, root)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                answers.append(f"{base}: {type(exc).__name__} {exc}".strip())
            except _Refused as exc:
                answers.append(f"{base}: {exc}")
        raise NotFoundError(f"no gateway gave a CAR of {root} ({'; '.join(answers)})")

    async def _car_from(self, base: str, url: str, accept: str, root: CID) -> int:
        with tempfile.NamedTemporaryFile(dir=self.staging, prefix="car-") as tmp:
            async with self.session.get(url, headers={"Accept": accept}) as resp:
                if resp.status != 200:
                    why = (await resp.content.read(300)).decode("utf-8", "replace").strip()
                    raise _Refused(f"HTTP {resp.status} {why.splitlines()[0] if why else ''}")
                kind = resp.headers.get("Content-Type", "")
                if not kind.startswith(CAR_TYPE):
                    raise _Refused(f"answered {kind or 'no Content-Type'}, not a CAR")
                try:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        self._count(len(chunk), f"the CAR of {root} from {base}")
                        tmp.write(chunk)
                except aiohttp.ClientPayloadError as exc:  # the gateway cut the stream
                    raise StoreError(f"the CAR from {base} ended early ({exc})") from None
            tmp.flush()
            tmp.seek(0)
            _, blocks = read_car(tmp, f"from {base}")  # type: ignore[arg-type]
            for cid, data in blocks:  # each re-hashed and decoded by the reader
                self.stage(cid, data)
        return self.complete(root, f"the CAR from {base}")

    def complete(self, root: CID, where: str) -> int:
        """Check that every block under `root` is staged or stored; drop staged blocks the DAG
        does not reach. The number of blocks in the DAG."""
        seen: set[str] = set()
        stack: list[tuple[CID, CID | None]] = [(root, None)]
        while stack:
            cid, parent = stack.pop()
            key = cid_key(cid)
            if key in seen:
                continue
            seen.add(key)
            data = self.staged_block(cid)
            if data is None:
                if not self.store.has(cid):
                    under = f" (linked from {parent})" if parent is not None else ""
                    raise StoreError(f"{where} lacks block {cid}{under}: it is incomplete")
                data = self.store.get_block(cid)
            stack.extend((link, cid) for link in links_of(cid, data))
        for key in [k for k in self.staged if k not in seen]:
            del self.staged[key]
        return len(seen)

    def commit(self) -> int:
        added = 0
        for key, cid in self.staged.items():
            if not self.store.has(cid):
                self.store.put_block((self.staging / key).read_bytes(), cid.codec.name)
                added += 1
        return added


class _Refused(Exception):
    pass


async def fetch_async(
    store: BlockStore,
    gateways: list[str],
    cid: CID | str,
    *,
    car: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
) -> FetchReport:
    """Fetch the DAG under `cid` from `gateways` (base URLs, tried in order) into `store`: all
    of it, verified, or nothing. See the module docstring."""
    root = as_cid(cid)
    bases = [gateway_url(g) for g in gateways]
    if not bases:
        raise StoreError("no gateway to fetch from")
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    with tempfile.TemporaryDirectory(dir=store.root, prefix=STAGING_PREFIX) as tmp:
        async with aiohttp.ClientSession(timeout=client_timeout, trust_env=False) as session:
            job = _Fetch(store, Path(tmp), bases, max_bytes, session)
            try:
                if car:
                    blocks = await job.by_car(root)
                else:
                    blocks = await job.by_blocks(root)
                    job.complete(root, "the gateways")
            except ConsortiumError as exc:
                raise StoreError(f"fetching {root}: {exc}") from None
        fetched = job.commit()
        return FetchReport(root, blocks=blocks, fetched=fetched, bytes=job.bytes)


def fetch(
    store: BlockStore,
    gateways: list[str],
    cid: CID | str,
    *,
    car: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = DEFAULT_TIMEOUT,
) -> FetchReport:
    """`fetch_async` for callers outside an event loop (the CLI)."""
    return asyncio.run(
        fetch_async(store, gateways, cid, car=car, max_bytes=max_bytes, timeout=timeout)
    )


__all__ = ["DEFAULT_MAX_BYTES", "FetchReport", "fetch", "fetch_async", "gateway_url"]
