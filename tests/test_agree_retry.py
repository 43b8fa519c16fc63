"""A `run stop` (or any agreed entry) proposed while a round commits is proposed again at the new
ledger size, not reported as refused; a refusal by policy is not retried."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from consortium.node import agreement as node_agreement
from consortium.protocol import agreement
from consortium.protocol.record import STOP_KIND
from tests.inprocess_cluster import cluster, run_config, start


def _stale_then_real(node: Any, reason: str) -> list[int]:
    """Replace `node._agree_at_head`: the first call answers as if node2 had refused with
    `reason`; later calls run the real agreement. Returns the sizes each call saw."""
    real = node._agree_at_head
    seen: list[int] = []

    async def fake(kind: str, body: dict[str, Any], proofs: tuple[bytes, ...] = ()) -> Any:
        seen.append(node.ledger.size)
        if len(seen) == 1:
            return {"agreed": False, "accepted": [], "refused": {"node2": reason},
                    "unreachable": {}}  # fmt: skip
        return await real(kind, body, proofs)

    node._agree_at_head = fake
    return seen


async def _stop_with(root: Path, reason: str) -> tuple[dict[str, Any], list[int], list[str]]:
    nodes, _, _ = await cluster(root, 3, 81, consent=False)
    try:
        await start(nodes, run_config(50, 0))
        seen = _stale_then_real(nodes[1], reason)
        report = await nodes[1].propose_stop("pause")
        kinds = [e.kind for e in nodes[1].ledger.iter_entries()]
        return report, seen, kinds
    finally:
        for n in nodes:
            await n.stop()


def test_a_stop_refused_for_a_stale_head_is_proposed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_agreement, "AGREE_RETRY_DELAY", 0.0)
    stale = f"refused 'run-vote': {agreement.STALE_HEAD} (size 3) plus the entry"
    report, seen, kinds = asyncio.run(_stop_with(tmp_path, stale))
    assert report["agreed"], report
    assert len(seen) == 2 and kinds.count(STOP_KIND) == 1


def test_a_stop_refused_by_policy_is_not_proposed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_agreement, "AGREE_RETRY_DELAY", 0.0)
    report, seen, kinds = asyncio.run(_stop_with(tmp_path, "refused: not while I train"))
    assert not report["agreed"] and report["refused"] == {"node2": "refused: not while I train"}
    assert len(seen) == 1 and STOP_KIND not in kinds
