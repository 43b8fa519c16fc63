"""`consortium ui`: the dashboard's pages through Starlette's TestClient over a real run folder
(three in-process nodes: consent, DP-SGD, SecAgg+, anchors), read-only, with bad input refused
by a page and an HTTP 4xx."""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.consent import Receipt
from consortium.core.layout import LEDGER_FILE
from consortium.ledger import Ledger
from consortium.protocol.record import round_records
from consortium.ui.overview import read_anchors
from consortium.ui.web import CSP, create_app
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.ui_folder import ROUNDS, WITHDRAWN, make_run_folder, write_receipt

PAGES = ("/", "/round/1", "/ledger", "/anchors", "/consent", "/audit")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_run_folder(tmp_path_factory.mktemp("web") / "run")


@pytest.fixture(scope="module")
def client(run_folder: Path) -> Iterator[TestClient]:
    with TestClient(create_app(run_folder), raise_server_exceptions=False) as c:
        yield c


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _text(page: str) -> str:
    return " ".join(html.unescape(page).split())


def test_run_page(client: TestClient, run_folder: Path) -> None:
    res = client.get("/")
    assert res.status_code == 200
    assert res.headers["content-security-policy"] == CSP
    page = res.text
    for text in ("node0", "node1", "node2", "research", "<svg", 'href="/round/1"', "budget ε 8"):
        assert text in page
    assert "<script" not in page
    assert "Record of processing" in page and "not declared" in page


def test_round_page_shows_what_the_record_says(client: TestClient, run_folder: Path) -> None:
    with Ledger.open(run_folder / "node0" / LEDGER_FILE, readonly=True) as ledger:
        records = [r for _, r in round_records(enumerate(ledger.iter_entries()))]
    names = {"node0", "node1", "node2"}
    for r in records:
        page = client.get(f"/round/{r.round}").text
        assert r.secagg is not None and str(r.secagg.transcript) in page
        for c in r.consent.values():
            assert c.root.hex() in page and c.head.hex() in page
        assert f"attempt</dt><dd>{r.attempt}" in page
        assert "final head of size" in page  # cosigners
        assert any(f"leader</dt><dd>{n} " in page for n in names)


def test_unknown_rounds_and_pages_are_404_pages(client: TestClient) -> None:
    for path, says in (
        (f"/round/{ROUNDS + 1}", f"no round {ROUNDS + 1}"),
        ("/round/abc", "no round 'abc'"),
        ("/nowhere", "no page"),
        ("/ledger?start=999", "no entry 999"),
    ):
        res = client.get(path)
        assert res.status_code == 404, path
        assert says in _text(res.text) and "Traceback" not in res.text


def test_ledger_and_proofs(client: TestClient, run_folder: Path) -> None:
    with Ledger.open(run_folder / "node0" / LEDGER_FILE, readonly=True) as ledger:
        size, root = ledger.size, ledger.root().hex()
    page = client.get("/ledger").text
    assert root in page and "run-config" in page and "round" in page
    res = client.get(f"/ledger/inclusion?index=2&size={size}")
    assert res.status_code == 200 and f"Verified: entry 2 is in the tree of size {size}" in res.text
    res = client.get(f"/ledger/consistency?old=2&new={size}")
    assert res.status_code == 200 and "Verified: the tree of size" in res.text
    for bad, says in (
        (f"/ledger/inclusion?index={size}", "is not in a tree"),
        ("/ledger/inclusion?index=x", "must be a whole number"),
        ("/ledger/inclusion", "give index"),
        ("/ledger/consistency?old=3&new=2", "give 0 < old"),
        ("/ledger/consistency?old=-1", "must not be negative"),
    ):
        res = client.get(bad)
        assert res.status_code == 400, bad
        assert says in _text(res.text)


def test_anchors_page(client: TestClient, run_folder: Path) -> None:
    anchors = read_anchors(run_folder / "node0")
    assert anchors.events
    page = client.get("/anchors").text
    assert anchors.contract is not None and anchors.contract in page
    for e in anchors.events:
        assert e.tx_hash in page and e.head.root.hex() in page


def test_receipt_checker(client: TestClient, run_folder: Path, tmp_path: Path) -> None:
    used = write_receipt(run_folder / "node0", tmp_path / "used.json")
    res = client.post("/consent/check", data={"receipt": used})
    assert res.status_code == 200
    assert res.text.count(">used<") == ROUNDS and "Verified against the ledger" in res.text
    for salt in Receipt.loads(used).salts.values():
        assert salt.hex() not in res.text  # the receipt's secret is never echoed
    # uploaded as a file: the withdrawn subject's record was not used in any round
    unused = write_receipt(run_folder / "node0", tmp_path / "unused.json", WITHDRAWN)
    res = client.post("/consent/check", files={"file": ("r.json", unused, "application/json")})
    assert res.status_code == 200 and res.text.count(">not-used<") == ROUNDS
    # a forged proof is caught by name
    forged = json.loads(used)
    forged["rounds"][0]["proof"][0] = "00" * 32
    res = client.post("/consent/check", data={"receipt": json.dumps(forged)})
    assert res.status_code == 200 and ">invalid<" in res.text and "do not match" in res.text


def test_malformed_receipts_are_400(client: TestClient, run_folder: Path, tmp_path: Path) -> None:
    good = json.loads(write_receipt(run_folder / "node0", tmp_path / "r.json"))
    for body, says in (
        ("not json", "not a valid receipt"),
        ('{"format": "other"}', "unknown receipt format"),
        (json.dumps({**good, "rounds": "x"}), "malformed receipt"),
        (json.dumps({**good, "node": "bafz-not-a-member"}), "not a member"),
        ("", "paste a receipt"),
    ):
        res = client.post("/consent/check", data={"receipt": body})
        assert res.status_code == 400, body
        assert says in _text(res.text) and "Traceback" not in res.text


def test_audit_runs_on_request(client: TestClient) -> None:
    assert "Run the audit" in client.get("/audit").text
    res = client.post("/audit")
    assert res.status_code == 200 and "audit OK" in res.text


def test_dashboard_writes_nothing(run_folder: Path) -> None:
    before = _snapshot(run_folder)
    with TestClient(create_app(run_folder)) as c:
        for path in (*PAGES, "/ledger/inclusion?index=1"):
            assert c.get(path).status_code == 200, path
    assert _snapshot(run_folder) == before


def test_never_shows_keys(client: TestClient, run_folder: Path) -> None:
    pages = "".join(client.get(p).text for p in PAGES)
    for node in run_folder.glob("node*"):
        for key in ("node.key", "tls.key"):
            body = (node / key).read_text().splitlines()[1]
            assert body not in pages


def test_not_a_node_folder_is_a_404_page(tmp_path: Path) -> None:
    with TestClient(create_app(tmp_path)) as c:
        for path in ("/", "/ledger", "/audit"):
            res = c.get(path)
            assert res.status_code == 404
            assert "is not a node folder" in _text(res.text)


def test_dashboard_follows_a_growing_ledger(tmp_path: Path) -> None:
    """One app over a folder whose nodes keep writing: each page shows the ledger as it is now."""

    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path, 3, 17)
        try:
            with TestClient(create_app(tmp_path / "node1")) as c:
                assert "no run on the ledger" in _text(c.get("/").text)
                await start(nodes, run_config(1, 0))
                await drive(nodes, net, clock)
                first = c.get("/")
                assert first.status_code == 200 and 'href="/round/1"' in first.text
                await start(nodes, run_config(2, 1))
                await drive(nodes, net, clock)
                second = c.get("/").text
                assert 'href="/round/2"' in second and "finished (2 of 2" in _text(second)
                assert c.get("/round/2").status_code == 200
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_ui_command_refuses_a_folder_that_is_not_a_node_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["ui", str(tmp_path), "--port", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "is not a node folder" in " ".join(res.output.split())
