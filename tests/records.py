"""Shared by tests: well-formed round-record bodies for ledgers built by hand."""

from __future__ import annotations

from typing import Any

from consortium.protocol.record import RoundRecord
from consortium.store.cid import cid_for


def round_body(
    node: str, slot: int, consent: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A round record of one contributor `node` at ledger `slot` (fields override defaults)."""
    model = cid_for(b"model %d" % slot)
    record = RoundRecord(
        run="r" * 16,
        round=slot,
        attempt=0,
        leader=node,
        slot=slot,
        participants=(node,),
        dropouts=(),
        samples={node: 1},
        updates={node: bytes(32)},
        metrics={node: {}},
        model=model,
        prev_model=model,
        aggregation="fedavg",
    )
    body = record.to_body()
    if consent is not None:
        body["consent"] = {node: consent}
    return {**body, **fields}
