"""The store over HTTP as an IPFS Trustless Gateway (`store/gateway.py`) and the client that fetches
from any such gateway (`store/fetch.py`): what the spec asks of responses, every bad request
refused with a 4xx naming it, hostile gateways refused with nothing half-imported, and, in the
slow tests, Helia (the IPFS project's JavaScript implementation) on both ends."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from multiformats import CID, multihash
from typer.testing import CliRunner

from consortium.cli.app import app as cli
from consortium.core.encoding import encode
from consortium.core.errors import ConfigError, StoreError
from consortium.node.config import load_node_config
from consortium.protocol.record import run_records
from consortium.store import BlockStore, file_cid, get_bytes, iter_blocks, put_bytes, put_object
from consortium.store.car import car_header, car_section, read_car
from consortium.store.fetch import fetch
from consortium.store.gateway import CAR_TYPE, RAW_TYPE, start_gateway
from tests.inprocess_cluster import drive, run_config, start, start_nodes
from tests.ipfs_support import JS_DIR, copy_scripts, needs_helia, run_js

runner = CliRunner()
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- serving in a background thread ----------------------------------------------------------------


@contextmanager
def serving(make: Callable[[], Awaitable[tuple[web.AppRunner, int]]]) -> Iterator[str]:
    """Run the server `make` starts in its own thread and event loop; yield its base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        asyncio.set_event_loop(loop)
        box["runner"], box["port"] = loop.run_until_complete(make())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        runner = box["runner"]
        assert isinstance(runner, web.AppRunner)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def gateway(store: BlockStore) -> Callable[[], Awaitable[tuple[web.AppRunner, int]]]:
    return lambda: start_gateway(store, "127.0.0.1", 0)


def hostile(
    answers: dict[str, tuple[int, bytes, str]],
) -> Callable[[], Awaitable[tuple[web.AppRunner, int]]]:
    """A gateway that answers `/ipfs/{cid}` with answers[cid] = (status, body, content type),
    whatever the format asked; 404 for any other CID."""

    async def handle(request: web.Request) -> web.Response:
        status, body, kind = answers.get(request.match_info["cid"], (404, b"no\n", "text/plain"))
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    async def make() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, int(runner.addresses[0][1])

    return make


def get(
    url: str, accept: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with _NO_PROXY.open(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _file(store: BlockStore, size: int = 3 * 1024 * 1024 + 5, seed: int = 1) -> tuple[CID, bytes]:
    data = np.random.default_rng(seed).bytes(size)
    return put_bytes(store, data), data


def _empty(store: BlockStore) -> bool:
    """No block, and nothing staged, in `store`."""
    return list(store.iter_cids()) == [] and [p.name for p in store.root.iterdir()] == ["blocks"]


# -- the server ------------------------------------------------------------------------------------


def test_a_raw_block_with_the_headers_the_spec_asks(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store)
    with serving(gateway(store)) as url:
        for path, accept in ((f"/ipfs/{root}?format=raw", None), (f"/ipfs/{root}", RAW_TYPE)):
            status, headers, body = get(url + path, accept)
            assert status == 200 and body == store.get_block(root)
            assert hashlib.sha256(body).digest() == bytes(root.raw_digest)
            assert headers["Content-Type"] == RAW_TYPE
            assert headers["Content-Disposition"] == f'attachment; filename="{root}.bin"'
            assert headers["Etag"] == f'"{root}.raw"'
            assert "immutable" in headers["Cache-Control"]
            assert headers["X-Content-Type-Options"] == "nosniff"
        status, headers, body = get(f"{url}/ipfs/{root}?format=raw", method="HEAD")
        assert status == 200 and body == b"" and headers["Content-Type"] == RAW_TYPE


def test_a_car_holds_the_dag_depth_first_and_dag_scope_limits_it(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store)
    obj = put_object(store, {"model": root, "round": 1})
    with serving(gateway(store)) as url:
        status, headers, body = get(f"{url}/ipfs/{root}?format=car")
        assert status == 200
        assert headers["Content-Type"] == f"{CAR_TYPE}; version=1; order=dfs; dups=n"
        assert headers["Content-Disposition"] == f'attachment; filename="{root}.car"'
        roots, blocks = read_car(io.BytesIO(body), "response")
        assert roots == [root]
        assert [(str(c), b) for c, b in blocks] == [
            (str(c), b) for c, b in iter_blocks(store, root)
        ]

        def scope(cid: CID, value: str) -> list[str]:
            status, _, body = get(f"{url}/ipfs/{cid}?format=car&dag-scope={value}")
            assert status == 200
            return [str(c) for c, _ in read_car(io.BytesIO(body), "response")[1]]

        assert scope(root, "block") == [str(root)]
        assert scope(obj, "entity") == [str(obj)]  # a dag-cbor object's entity is its block
        assert scope(root, "entity") == scope(root, "all")  # a file's is the whole file
        assert scope(obj, "all") == [str(obj), *scope(root, "all")]
        # Accept alone (no format) selects a CAR too, with its parameters
        status, headers, _ = get(f"{url}/ipfs/{root}", f"{CAR_TYPE}; version=1; order=dfs; dups=n")
        assert status == 200 and headers["Content-Type"].startswith(CAR_TYPE)


def test_dups_y_repeats_a_block_each_time_it_occurs(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    zeros = put_bytes(store, bytes(3 * 1024 * 1024), "kubo-cid-v1")  # 12 equal leaves
    with serving(gateway(store)) as url:
        counts = {}
        for dups in ("n", "y"):
            status, headers, body = get(f"{url}/ipfs/{zeros}?format=car&car-dups={dups}")
            assert status == 200 and headers["Content-Type"].endswith(f"dups={dups}")
            counts[dups] = len(list(read_car(io.BytesIO(body), "response")[1]))
    assert counts == {"n": 2, "y": 13}


DAG_JSON = CID("base32", 1, "dag-json", multihash.digest(b"{}", "sha2-256"))
SHA512 = CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))
UNKNOWN = CID("base32", 1, "raw", multihash.digest(b"nobody holds this", "sha2-256"))

BAD_REQUESTS = {
    "no format, no Accept": ("/ipfs/{root}", None, 400, "needs ?format=raw|car"),
    "Accept html": ("/ipfs/{root}", "text/html", 406, "names neither"),
    "other format": ("/ipfs/{root}?format=html", None, 400, "format=html is not served"),
    "not a CID": ("/ipfs/bafyreigarbage?format=raw", None, 400, "not a valid CID"),
    "codec": (f"/ipfs/{DAG_JSON}?format=raw", None, 400, "has codec dag-json"),
    "hash": (f"/ipfs/{SHA512}?format=raw", None, 400, "only sha2-256"),
    "unknown CID": (f"/ipfs/{UNKNOWN}?format=raw", None, 404, f"block {UNKNOWN} is not in"),
    "unknown CID, CAR": (f"/ipfs/{UNKNOWN}?format=car", None, 404, f"block {UNKNOWN} is not in"),
    "path": ("/ipfs/{root}/a/b?format=car", None, 400, "paths under a CID are not served"),
    "scope": ("/ipfs/{root}?format=car&dag-scope=most", None, 400, "dag-scope=most is not one"),
    "scope on raw": ("/ipfs/{root}?format=raw&dag-scope=all", None, 400, "CAR responses only"),
    "entity-bytes": ("/ipfs/{root}?format=car&entity-bytes=0:9", None, 400, "entity-bytes"),
    "CARv2": ("/ipfs/{root}?format=car&car-version=2", None, 400, "CAR version 2"),
    "CARv2 in Accept": ("/ipfs/{root}", f"{CAR_TYPE}; version=2", 400, "CAR version 2"),
    "order": ("/ipfs/{root}?format=car&car-order=bfs", None, 400, "order=bfs"),
}


def test_every_bad_request_is_a_4xx_naming_what_is_wrong(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store, 1000)
    with serving(gateway(store)) as url:
        for case, (path, accept, status, words) in BAD_REQUESTS.items():
            got, _headers, body = get(url + path.format(root=root), accept)
            assert got == status and words in body.decode(), (case, got, body)
            assert len(body.decode().strip().splitlines()) == 1, case
        assert get(f"{url}/ipfs/{root}?format=raw", method="POST")[0] == 405  # read only
        assert get(f"{url}/ipfs/{root}?format=raw", method="DELETE")[0] == 405


def test_the_spec_probe_answers(tmp_path: Path) -> None:
    with serving(gateway(BlockStore(tmp_path / "s"))) as url:
        assert get(f"{url}/ipfs/bafkqaaa?format=raw")[:3:2] == (200, b"")
        status, headers, body = get(f"{url}/ipfs/bafkqaaa?format=car")
        assert status == 200 and body == car_header([CID.decode("bafkqaaa")])
        assert headers["Content-Type"].startswith(CAR_TYPE)


def _damage(store: BlockStore, cid: CID) -> None:
    path = store.path_for(cid)
    os.chmod(path, 0o644)
    path.write_bytes(b"not what it was")


def test_a_damaged_block_is_never_served_and_a_cut_car_imports_nothing(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store)
    leaf = [c for c, _ in iter_blocks(store, root)][-1]
    _damage(store, leaf)
    mine = BlockStore(tmp_path / "mine")
    with serving(gateway(store)) as url:
        status, _, body = get(f"{url}/ipfs/{leaf}?format=raw")
        assert status == 500 and f"block {leaf} is corrupt" in body.decode()
        # The CAR stream has begun (200) when the damage is found: it ends early.
        with pytest.raises(StoreError, match=rf"fetching {root}: the CAR from {url} ended early"):
            fetch(mine, [url], root, car=True)
        with pytest.raises(StoreError, match=f"no gateway gave block {leaf}.*HTTP 500"):
            fetch(mine, [url], root)
    assert _empty(mine)


# -- the client ------------------------------------------------------------------------------------


def test_fetch_block_by_block_or_as_a_car_then_nothing_twice(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, data = _file(store)
    obj = put_object(store, {"model": root})
    blocks = len(list(iter_blocks(store, obj)))
    with serving(gateway(store)) as url:
        for car in (False, True):
            mine = BlockStore(tmp_path / f"car-{car}")
            report = fetch(mine, [url], obj, car=car)
            assert (report.blocks, report.fetched) == (blocks, blocks)
            assert get_bytes(mine, root) == data
            again = fetch(mine, [url], obj, car=car)
            assert again.fetched == 0 and (car or again.bytes == 0)


def test_gateways_are_tried_in_order(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, data = _file(store)
    mine = BlockStore(tmp_path / "mine")
    with serving(gateway(BlockStore(tmp_path / "empty"))) as empty, serving(gateway(store)) as full:
        fetch(mine, ["http://127.0.0.1:9", empty, full], root)  # nothing listens on port 9
        assert get_bytes(mine, root) == data
        other = BlockStore(tmp_path / "other")
        with pytest.raises(StoreError) as err:
            fetch(other, [empty, "http://127.0.0.1:9"], UNKNOWN)
    message = str(err.value)
    assert f"no gateway gave block {UNKNOWN}" in message
    assert f"{empty}: HTTP 404" in message and "http://127.0.0.1:9: ClientConnectorError" in message
    assert _empty(other)


def _lying(
    store: BlockStore, root: CID, tmp_path: Path, what: str
) -> tuple[dict[str, tuple[int, bytes, str]], str]:
    """Answers of a gateway that serves `root`'s blocks honestly but one, per `what`; and the
    words the refusal must contain."""
    blocks = list(iter_blocks(store, root))
    answers = {str(c): (200, b, RAW_TYPE) for c, b in blocks}
    leaf = blocks[-1][0]
    if what == "mismatch":
        answers[str(leaf)] = (200, blocks[-2][1], RAW_TYPE)
        return answers, f"block {leaf} from http://127.0.0.1:\\d+ does not match its CID"
    if what == "oversize":
        answers[str(leaf)] = (200, bytes(2 * 1024 * 1024), RAW_TYPE)
        return answers, f"block {leaf} from http://127.0.0.1:\\d+ is over"
    if what == "truncated":
        answers[str(leaf)] = (200, blocks[-1][1][:-1], RAW_TYPE)
        return answers, f"block {leaf} .* does not match its CID"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["mismatch", "oversize", "truncated"])
def test_a_lying_gateway_is_named_and_nothing_is_added(tmp_path: Path, what: str) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store)
    answers, words = _lying(store, root, tmp_path, what)
    mine = BlockStore(tmp_path / "mine")
    with (
        serving(hostile(answers)) as url,
        pytest.raises(StoreError, match=f"fetching {root}: {words}"),
    ):
        fetch(mine, [url], root)
    assert _empty(mine)


def test_a_link_to_an_unsupported_codec_is_refused_before_anything_is_added(tmp_path: Path) -> None:
    data = encode({"model": DAG_JSON})
    obj = CID("base32", 1, "dag-cbor", multihash.digest(data, "sha2-256"))
    mine = BlockStore(tmp_path / "mine")
    refused = pytest.raises(StoreError, match=f"block {obj} from .*codec dag-json")
    with serving(hostile({str(obj): (200, data, RAW_TYPE)})) as url, refused:
        fetch(mine, [url], obj)
    assert _empty(mine)


def test_a_car_that_lacks_a_block_or_passes_the_limit_adds_nothing(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    root, _ = _file(store)
    blocks = list(iter_blocks(store, root))
    stranger = b"a block the DAG does not reach"
    short = car_header([root]) + b"".join(
        car_section(c, b) + b for c, b in [*blocks[:-1], (file_cid(stranger), stranger)]
    )
    answers = {str(root): (200, short, f"{CAR_TYPE}; version=1")}
    mine = BlockStore(tmp_path / "mine")
    with serving(hostile(answers)) as url:
        with pytest.raises(
            StoreError, match=f"CAR from {url} lacks block {blocks[-1][0]} \\(linked from {root}\\)"
        ):
            fetch(mine, [url], root, car=True)
        assert _empty(mine)
    html = {str(root): (200, b"<html>", "text/html")}
    refused = pytest.raises(StoreError, match="answered text/html, not a CAR")
    with serving(hostile(html)) as url, refused:
        fetch(mine, [url], root, car=True)
    with serving(gateway(store)) as url:
        with pytest.raises(StoreError, match="passed its limit of 1000000 bytes"):
            fetch(mine, [url], root, max_bytes=1_000_000)
        with pytest.raises(StoreError, match="passed its limit of 1000000 bytes"):
            fetch(mine, [url], root, car=True, max_bytes=1_000_000)
    assert _empty(mine)


# -- the commands and the node option --------------------------------------------------------------


def _one_line(res: object) -> str:
    stderr = res.stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return str(lines[0])


def test_commands_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    res = runner.invoke(
        cli, ["store", "fetch", str(UNKNOWN), "--gateway", "ftp://x", "--dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "is not an http(s) URL" in _one_line(res)
    res = runner.invoke(
        cli, ["store", "fetch", "nonsense", "--gateway", "http://x", "--dir", str(tmp_path)]
    )
    assert res.exit_code != 0 and "not a valid CID" in _one_line(res)
    res = runner.invoke(cli, ["store", "serve", str(tmp_path / "nowhere")])
    assert res.exit_code != 0 and "is not a folder" in _one_line(res)
    assert not (tmp_path / "store").exists()  # a refused fetch creates nothing
    res = runner.invoke(cli, ["store", "serve", str(tmp_path)])
    assert res.exit_code != 0 and "no block store" in _one_line(res)
    res = runner.invoke(cli, ["store", "serve", "--help"])
    assert res.exit_code == 0 and "Trustless Gateway" in res.stdout and "127.0.0.1" in res.stdout
    store = BlockStore(tmp_path / "store")
    root, _ = _file(store, 100)
    with serving(gateway(store)) as url:
        port = int(url.rsplit(":", 1)[1])
        res = runner.invoke(cli, ["store", "serve", str(tmp_path), "--port", str(port)])
        assert res.exit_code != 0 and f"cannot serve the store on 127.0.0.1:{port}" in _one_line(
            res
        )
        other = tmp_path / "other"
        other.mkdir()
        res = runner.invoke(
            cli, ["store", "fetch", str(root), "--gateway", url, "--dir", str(other)]
        )
        assert res.exit_code == 0 and f"fetched {root}: 1 blocks (1 new" in res.stdout


def test_the_node_option_is_checked(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text('gateway = "127.0.0.1:8080"\n')
    assert load_node_config(tmp_path).gateway == "127.0.0.1:8080"
    (tmp_path / "node.toml").write_text('gateway = "8080"\n')
    with pytest.raises(ConfigError, match="gateway"):
        load_node_config(tmp_path)


# -- Helia, the IPFS project's JavaScript implementation (slow: Node.js) ---------------------------


@pytest.mark.slow
@needs_helia
def test_helia_verified_fetch_gets_a_runs_model_from_a_node(tmp_path: Path) -> None:
    """A 3-member run whose first node serves its store while it runs (node.toml `gateway`):
    Helia's verified-fetch, with that node as its only source, fetches the run's model by CID,
    verifying every block, and gets the model's bytes."""
    from consortium.node.sim import create_consortium

    dirs = create_consortium(
        tmp_path / "run",
        3,
        alpha=0.5,
        seed=5,
        reproducible=True,
        consent=False,
        allow_plaintext=True,
    )
    config = dirs[0] / "node.toml"
    config.write_text('gateway = "127.0.0.1:0"\n' + (config.read_text() if config.exists() else ""))

    async def main() -> tuple[list[str], bytes, str]:
        nodes, net, clock = await start_nodes(dirs)
        try:
            await start(nodes, run_config(2, seed=5))
            await drive(nodes, net, clock)
            model = run_records(nodes[0].ledger)[-1].model
            url = f"http://127.0.0.1:{nodes[0].gateway_port}"
            out = await asyncio.to_thread(run_js, "helia_fetch.mjs", url, str(model))
            return out.splitlines(), get_bytes(nodes[0].store, model), str(model)
        finally:
            for n in nodes:
                await n.stop()

    lines, model, cid = asyncio.run(main())
    assert lines == [
        "status 200",
        "type application/octet-stream",
        f"bytes {len(model)}",
        f"sha256 {hashlib.sha256(model).hexdigest()}",
    ], cid


@pytest.mark.slow
@needs_helia
@pytest.mark.parametrize("profile", ["unixfs-v0-2015", "unixfs-v1-2025"])
def test_we_fetch_what_a_helia_gateway_serves(tmp_path: Path, profile: str) -> None:
    """Helia imports a file into its blockstore and serves it through verified-fetch as a
    trustless gateway; we fetch it block by block and as Helia's own CAR, verifying each block."""
    data = np.random.default_rng(3).bytes(3 * 1024 * 1024 + 7)
    src = tmp_path / "model.bin"
    src.write_bytes(data)
    copy_scripts()
    proc = subprocess.Popen(
        ["node", str(JS_DIR / "helia_gateway.mjs"), profile, str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["listening"], proc.stderr.read() if proc.stderr else ""
        url, cid = f"http://127.0.0.1:{first[1]}", first[2]
        assert cid == str(file_cid(data, profile))
        for car in (False, True):
            mine = BlockStore(tmp_path / f"car-{car}")
            report = fetch(mine, [url], cid, car=car)
            assert report.fetched == report.blocks > 1
            assert get_bytes(mine, cid) == data
        with pytest.raises(StoreError, match=f"no gateway gave block {UNKNOWN}"):
            fetch(BlockStore(tmp_path / "none"), [url], UNKNOWN)
    finally:
        proc.kill()
        proc.wait(30)
