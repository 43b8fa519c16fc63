"""Shared by tests: well-formed round-record bodies for ledgers built by hand, and the round
records of a node folder's ledger."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consortium.core.identity import NodeIdentity
from consortium.core.layout import LEDGER_FILE
from consortium.ledger.entries import Entry, make_record
from consortium.ledger.log import Ledger
from consortium.protocol.record import RoundRecord, round_records
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


Rewrite = Callable[[Entry], "tuple[str, dict[str, Any]] | None"]


def forge_folder(folder: Path, out: Path, rewrite: Rewrite) -> Path:
    """Copy node folder `folder` (genesis, store) to `out` with its ledger rebuilt: each entry
    after genesis is re-signed as `rewrite(entry)` = (author, body), or dropped when it returns
    None. Every member's key is on this disk (a simulated consortium), so this is what a
    colluding quorum could write; `audit` must still refuse what breaks a rule."""
    ids = {i.node_id: i for i in (NodeIdentity.load(d) for d in folder.parent.glob("node*"))}
    out.mkdir()
    shutil.copy(folder / "genesis.json", out / "genesis.json")
    shutil.copytree(folder / "store", out / "store")
    with Ledger.open(folder / "ledger.sqlite") as real:
        genesis, entries = real.genesis(), list(real.iter_entries(1))
    with Ledger.create(out / "ledger.sqlite", genesis) as forged:
        for e in entries:
            new = rewrite(e)
            if new is not None:
                author, body = new
                forged.append(make_record(ids[author], e.kind, body, e.time, genesis))
    return out


def ledger_records(folder: Path) -> list[RoundRecord]:
    """Every round record on the ledger of node folder `folder` (of every run), in order."""
    with Ledger.open(folder / LEDGER_FILE, readonly=True) as ledger:
        return [r for _, r in round_records(enumerate(ledger.iter_entries()))]
