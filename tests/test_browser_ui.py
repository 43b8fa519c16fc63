"""The dashboard and the static receipt checker in a real browser: Debian's headless chromium
driven by playwright (`playwright install` cannot download its own browser here; `make test`
installs chromium through apt, see "Skip policy for system packages").

Over a real run folder, served by uvicorn on 127.0.0.1: opens the run, clicks into a round,
checks a receipt on the dashboard and on the static page (whose check runs in the browser's
JavaScript), and takes screenshots. Set CONSORTIUM_SCREENSHOTS=docs/img to refresh the README's two
(dashboard-run.png, dashboard-receipt.png).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from consortium.ui import report as renderer
from consortium.ui.overview import read_overview
from consortium.ui.run_report import receipt_page
from consortium.ui.web import create_app
from tests.ui_folder import ROUNDS, WITHDRAWN, make_run_folder, write_receipt

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is missing: `make system-packages` (as root) installs it "
        "(apt-get install chromium)",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright==1.65.2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield make_run_folder(tmp_path_factory.mktemp("browser") / "run")


@pytest.fixture(scope="module")
def dashboard(run_folder: Path) -> Iterator[str]:
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(run_folder), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join()


@pytest.fixture(scope="module")
def browser(run_folder: Path) -> Iterator[Any]:
    """After the run folder: playwright's sync API keeps an event loop running in this thread,
    and the in-process cluster that makes the folder needs one of its own."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("CONSORTIUM_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _page(browser: Any) -> Any:
    return browser.new_page(viewport={"width": 1200, "height": 900})


def test_dashboard_round_and_receipt(
    browser: Any, dashboard: str, run_folder: Path, shots: Path, tmp_path: Path
) -> None:
    page = _page(browser)
    page.goto(dashboard + "/")
    assert "run" in page.title()
    assert page.locator("svg.chart").count() == 1  # the ε curve
    assert "budget ε 8" in page.content()
    page.screenshot(path=str(shots / "dashboard-run.png"), full_page=True)
    page.click('a[href="/round/1"]')
    page.wait_for_url("**/round/1")
    assert page.locator("h1").inner_text().startswith("Round 1 of run")
    facts = page.locator("dl.facts").inner_text()
    assert "transcript" in facts and "cosigners" in facts and "final head of size" in facts
    page.screenshot(path=str(tmp_path / "dashboard-round.png"), full_page=True)

    receipt = write_receipt(run_folder / "node0", tmp_path / "receipt.json")
    page.goto(dashboard + "/consent")
    page.fill('textarea[name="receipt"]', receipt)
    page.click("text=Check the receipt")
    page.wait_for_url("**/consent/check")
    assert "Verified against the ledger" in page.locator("p.ok").inner_text()
    assert page.locator("td", has_text="used").count() == ROUNDS
    page.screenshot(path=str(shots / "dashboard-receipt.png"), full_page=True)

    page.goto(dashboard + "/consent")
    page.fill('textarea[name="receipt"]', "{not a receipt")
    page.click("text=Check the receipt")
    assert "not a valid receipt" in page.locator("p.warning").inner_text()
    page.close()


def test_static_receipt_page_checks_in_the_browser(
    browser: Any, run_folder: Path, tmp_path: Path
) -> None:
    html = tmp_path / "receipts.html"
    renderer.write(receipt_page(read_overview(run_folder, anchors=False)), html)
    used = write_receipt(run_folder / "node0", tmp_path / "used.json")
    unused = write_receipt(run_folder / "node0", tmp_path / "unused.json", WITHDRAWN)
    forged = json.loads(used)
    forged["rounds"][-1]["proof"][0] = "00" * 32
    page = _page(browser)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri())

    def check(text: str) -> tuple[str, list[str]]:
        page.fill("#receipt-text", text)
        page.click("#receipt-check")
        rows = page.locator("#receipt-verdicts tr")
        return page.locator("#receipt-result").inner_text(), [
            rows.nth(i).get_attribute("data-status") or "" for i in range(rows.count())
        ]

    result, statuses = check(used)
    assert result.startswith("Verified against the ledger") and statuses == ["used"] * ROUNDS
    page.screenshot(path=str(tmp_path / "receipt-page.png"), full_page=True)
    result, statuses = check(unused)
    assert result.startswith("Verified") and statuses == ["not-used"] * ROUNDS
    result, statuses = check(json.dumps(forged))
    assert "do not match the ledger" in result and statuses[-1] == "invalid"
    result, _ = check("{nope")
    assert "not JSON" in result
    # choosing the file instead of pasting
    page.set_input_files("#receipt-file", str(tmp_path / "used.json"))
    page.wait_for_function("document.querySelectorAll('#receipt-verdicts tr').length > 0")
    assert page.locator("#receipt-result").inner_text().startswith("Verified")
    assert requests == [html.as_uri()]  # the page fetched nothing
    page.close()
