"""`audit` runs the voters' verifier on stored records: the attacks voters refuse fail audit too."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from consortium.audit import audit
from consortium.core.errors import AuditError
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import Entry
from consortium.ledger.log import Ledger
from consortium.protocol.schedule import leader_for
from tests.inprocess_cluster import cluster, drive, run_config, start
from tests.records import forge_folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")

    async def go() -> Path:
        nodes, net, clock = await cluster(root, 3, seed=51, consent=False)
        try:
            await start(nodes, run_config(2, 0))
            await drive(nodes, net, clock)
            return nodes[0].dir
        finally:
            for n in nodes:
                await n.stop()

    folder = asyncio.run(go())
    audit(folder)
    return folder


def _forge(
    folder: Path, out: Path, change: Callable[[dict[str, Any], list[str]], str | None]
) -> Path:
    """Copy `folder` with round 1's record rewritten by `change` and signed by the member it
    names (every member's key is on this disk), as a colluding leader would."""
    members = sorted(NodeIdentity.load(d).node_id for d in folder.parent.glob("node*"))

    def rewrite(e: Entry) -> tuple[str, dict[str, Any]]:
        body, author = dict(e.body), e.author
        if e.kind == "round" and body["round"] == 1:
            author = change(body, members) or author
        return author, body

    return forge_folder(folder, out, rewrite)


def test_audit_refuses_fake_participants(run_folder: Path, tmp_path: Path) -> None:
    def fake(body: dict[str, Any], members: list[str]) -> None:
        body["participants"] = sorted([*body["participants"], "fake-a", "fake-b"])

    with pytest.raises(AuditError, match=r"entry 2: .*rule participants-not-members"):
        audit(_forge(run_folder, tmp_path / "f", fake))


def test_audit_refuses_a_record_of_an_attempt_its_author_did_not_lead(
    run_folder: Path, tmp_path: Path
) -> None:
    def skip(body: dict[str, Any], members: list[str]) -> str:
        body["attempt"] = 1  # claimed by attempt 0's leader, who does not lead attempt 1
        return str(body["leader"])

    def impostor(body: dict[str, Any], members: list[str]) -> str:
        with Ledger.open(run_folder / "ledger.sqlite") as real:
            start_root = real.root(2)
        other = leader_for(start_root, 1, 1, members)  # leads attempt 1, signs as attempt 0
        body["leader"] = other
        return other

    with pytest.raises(AuditError, match=r"entry 2: .*rule author-not-attempt-leader"):
        audit(_forge(run_folder, tmp_path / "a", skip))
    with pytest.raises(AuditError, match=r"entry 2: .*rule author-not-attempt-leader"):
        audit(_forge(run_folder, tmp_path / "b", impostor))
