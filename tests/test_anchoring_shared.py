"""The production path: a run anchors on a chain the consortium shares (anvil here).

`consortium chain deploy` puts the contract on anvil and writes chain.toml; every member gets a
copy; each round's leader alone anchors its head; `consortium audit` checks the node folder
against the shared contract, and a fully re-signed forged ledger is caught by the anchors.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.audit import audit
from consortium.chain.client import AnchorChain
from consortium.cli.app import app
from consortium.cli.chain import chain_app
from consortium.core.errors import AuditError
from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.entries import Entry, make_record
from consortium.ledger.log import Ledger
from consortium.node.anchoring import CHAIN_CONFIG_FILE, Anchored, Anchorer, load_chain_config
from consortium.node.config import load_node_config
from consortium.node.node import Node
from consortium.node.sim import create_consortium
from consortium.transport.inprocess import InProcessNetwork, InProcessTransport
from tests.anvil_support import ANVIL_DEV_KEY, running_anvil
from tests.inprocess_cluster import Clock, drive, run_config, start

pytestmark = pytest.mark.slow

ROUNDS = 3
KEY_ENV = "TEST_CONSORTIUM_DEPLOYER_KEY"


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    with running_anvil() as url:
        yield url


def _run(dirs: list[Path]) -> list[Anchored]:
    """Train ROUNDS rounds (anchor every round) on real Nodes over the in-process transport."""

    async def go() -> list[Anchored]:
        net, clock = InProcessNetwork(), Clock()
        nodes = []
        for d in dirs:
            ident = NodeIdentity.load(d)
            cfg = load_node_config(d).model_copy(update={"tick_seconds": 0.02})
            transport = InProcessTransport(net, ident.node_id)
            nodes.append(Node(d, ident, transport, cfg, clock=clock))
        for node in nodes:
            await node.start()
        try:
            assert all(n.anchorer.shared for n in nodes)
            await start(nodes, run_config(ROUNDS, 13, anchor_every=1))
            await drive(nodes, net, clock)
        finally:
            for n in nodes:
                await n.stop()  # waits for anchors in flight
        return [a for n in nodes for a in n.anchorer.history]

    return asyncio.run(go())


def test_shared_chain_run_audit_and_forgery(
    anvil_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dirs = create_consortium(
        tmp_path / "c", 3, alpha=0.5, seed=13, reproducible=True, allow_plaintext=True
    )

    res = CliRunner().invoke(
        chain_app,
        [
            "deploy",
            "--url",
            anvil_url,
            "--dir",
            str(dirs[0]),
            "--deployer-key-env",
            KEY_ENV,
            "--fund-members",
            "0.5",
        ],
        env={KEY_ENV: ANVIL_DEV_KEY},
    )
    assert res.exit_code == 0, res.output
    assert ANVIL_DEV_KEY[2:] not in res.output  # the key is never echoed
    found = re.search(r"deployed at (0x[0-9a-fA-F]{40})", res.output)
    assert found, res.output
    contract = found.group(1)
    config = load_chain_config(dirs[0])
    assert config is not None and (config.url, config.contract) == (anvil_url, contract)
    assert res.output.count("funded") == 3
    # a second deploy would orphan the first contract: refused without --force
    again = CliRunner().invoke(
        chain_app,
        ["deploy", "--url", anvil_url, "--dir", str(dirs[0]), "--deployer-key-env", KEY_ENV],
        env={KEY_ENV: ANVIL_DEV_KEY},
    )
    assert again.exit_code == 2 and "exists" in again.stderr
    for d in dirs[1:]:
        shutil.copy(dirs[0] / CHAIN_CONFIG_FILE, d / CHAIN_CONFIG_FILE)

    with caplog.at_level(logging.INFO, logger="consortium"):
        anchors = _run(dirs)

    # One anchor per round, each sent by that round's leader (the entry's author).
    with Ledger.open(dirs[1] / LEDGER_FILE) as ledger:
        entries = [Entry.from_bytes(raw) for _, raw in ledger.raw_entries(1)]
        authors = [e.author for e in entries if e.kind == "round"]
        size = ledger.size
        genesis = ledger.genesis()
    assert len(authors) == ROUNDS and size == ROUNDS + 2  # genesis, run-config, rounds
    chain = AnchorChain.connect(anvil_url, contract)
    heads = chain.anchored_heads()
    assert [h.size for h in heads] == [3, 4, 5]
    evm = {m.node_id: m.evm_address for m in genesis.members}
    assert [h.submitter for h in heads] == [evm[a] for a in authors]
    assert sorted(a.size for a in anchors) == [3, 4, 5]  # after genesis and the run-config
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "anchor" in r.msg]
    gas = [a.tx.gas_used for a in anchors]
    secs = [a.seconds for a in anchors]
    print(
        f"\nshared-chain anchors on anvil: {len(anchors)}, latency median "
        f"{statistics.median(secs) * 1000:.0f} ms (max {max(secs) * 1000:.0f} ms), gas {gas}"
    )

    # The node folder audits against the shared contract named in its chain.toml.
    report = audit(dirs[1])
    assert report.anchored == ROUNDS
    assert report.latest_anchored_size == report.entries == ROUNDS + 2
    assert contract in report.extra["chain"]

    # An outside auditor with a folder copy but no chain.toml points at the chain explicitly.
    bare = tmp_path / "bare"
    shutil.copytree(dirs[2], bare)
    (bare / CHAIN_CONFIG_FILE).unlink()
    assert audit(bare).anchored == 0  # nothing to compare against without a chain
    res = CliRunner().invoke(
        app, ["audit", str(bare), "--chain-url", anvil_url, "--contract", contract]
    )
    assert res.exit_code == 0, res.output
    assert "3 anchored heads (latest size 5)" in " ".join(res.output.split())  # rich wraps

    # A late anchor of an already anchored size is a benign race: logged at info, not an error.
    caplog.clear()
    late = Anchorer(dirs[0], NodeIdentity.load(dirs[0]), genesis)
    try:
        with caplog.at_level(logging.INFO, logger="consortium"):
            asyncio.run(late.publish("node0", 4, heads[1].root))
    finally:
        late.close()
    notes = [r for r in caplog.records if "size 4" in r.getMessage()]
    assert len(notes) == 1 and notes[0].levelno == logging.INFO, notes
    assert "already anchored" in notes[0].getMessage()
    assert chain.count() == ROUNDS

    # Forge node0's history, re-signed and cosigned by every member's key: internally perfect,
    # but it does not extend what the shared contract holds.
    ids = [NodeIdentity.load(d) for d in dirs]
    forged = tmp_path / "forged"
    forged.mkdir()
    for name in ("genesis.json", CHAIN_CONFIG_FILE):
        shutil.copy(dirs[0] / name, forged / name)
    with Ledger.create(forged / LEDGER_FILE, genesis) as log:
        for k in range(ROUNDS + 1):  # as long as the real history (run-config and rounds)
            log.append(make_record(ids[0], "note", {"round": k + 1, "note": "forged"}, k, genesis))
            for ident in ids:
                log.sign_head(ident, 10 + k)
    with pytest.raises(AuditError, match="does not extend anchored head"):
        audit(forged)
    res = CliRunner().invoke(app, ["audit", str(forged)])
    assert res.exit_code != 0 and "does not extend anchored head" in res.stderr
