"""Everything the regulator report and the dashboard show about a node (or run) folder, read
without disturbing its node: the run (`node.run_status`), each round's record in full, the
ledger's heads and their cosigners, the anchors on the consortium's chain, and, on request, an
audit.

Read only, as `run status` reads: the ledger through a `query_only` connection, the embedded
chain's record opened read-only (replayed in memory), never the writer lock, never a new file.
What it shows is what the folder says; `audit` (which `audit_result` runs) re-verifies it.

Nothing here carries a key, a salt, a pseudonym or a record id: round records hold only
commitments and counts, and receipts are checked (`check_receipt`) without being kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consortium.audit import audit
from consortium.chain.client import RECORD_FILE, AnchorChain, AnchorTx
from consortium.consent import Receipt, RoundCommitment, Verdict, check_receipt
from consortium.consent.commitments import roots_from_records
from consortium.core.errors import ConsortiumError, LedgerError
from consortium.core.genesis import Genesis
from consortium.core.layout import CHAIN_DIR, LEDGER_FILE
from consortium.ledger.log import Ledger
from consortium.node.anchoring import load_chain_config
from consortium.node.run_status import FolderReader, RunStatus, node_folder
from consortium.protocol.record import RoundRecord


@dataclass(frozen=True)
class RoundDetail:
    """One committed round of the run, as its record and the ledger's heads say."""

    run: str
    round: int
    attempt: int
    leader: str
    participants: tuple[str, ...]
    dropouts: tuple[str, ...]
    index: int  # ledger index of the record (the slot consent commitments are made for)
    time: int  # ms, the leader's statement
    aggregation: str
    model: str  # CID
    transcript: str | None  # the SecAgg+ transcript's CID
    consent: Mapping[str, RoundCommitment]  # node id -> its commitment
    erasures: Mapping[str, int]  # node id -> records erased, as recorded with this round
    spend: float | None  # the round's largest ε spend (client or a node's records); inf: no noise
    epsilon: float | None  # the largest running total after it
    cosigners: tuple[str, ...]  # members who validly cosigned the first final head covering it
    final_size: int | None  # that head's size (None: no final head covers it yet)

    @property
    def records_used(self) -> int:
        return sum(c.count for c in self.consent.values())


@dataclass(frozen=True)
class HeadView:
    """A stored tree head with the members who validly cosigned it."""

    size: int
    root: bytes
    time: int
    signers: tuple[str, ...]
    final: bool


@dataclass(frozen=True)
class Anchors:
    """The anchors on the consortium's chain (embedded or shared), or why none are shown."""

    chain: str
    contract: str | None
    events: tuple[AnchorTx, ...]
    note: str = ""


@dataclass(frozen=True)
class AuditResult:
    ok: bool
    message: str  # the auditor's one line: the first problem, or a summary
    facts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Overview:
    folder: Path  # the node folder read
    status: RunStatus
    genesis: Genesis
    rounds: tuple[RoundDetail, ...]  # the run's committed rounds
    heads: tuple[HeadView, ...]
    anchors: Anchors
    consent_roots: Mapping[int, Mapping[str, RoundCommitment]]  # slot -> node -> commitment
    slots: Mapping[int, tuple[str, int]]  # slot -> (run, round), every run

    def name(self, node_id: str) -> str:
        return self.status.name(node_id)

    def round(self, number: int) -> RoundDetail:
        for r in self.rounds:
            if r.round == number:
                return r
        raise ConsortiumError(
            f"no round {number} in run {self.status.run} "
            f"({self.status.committed} of {self.status.target} committed)"
        )

    def check_receipt(self, receipt: Receipt) -> list[Verdict]:
        """Per round, whether the receipt's records were used, against this ledger's roots."""
        if not receipt.node:
            raise ConsortiumError("the receipt names no node")
        if receipt.node not in self.status.members:
            raise ConsortiumError(
                f"the receipt is from node {receipt.node[:16]}…, not a member of "
                f"{self.status.consortium}"
            )
        published = roots_from_records(sorted(self.consent_roots.items()), receipt.node)
        return check_receipt(receipt, published)


def _spend(privacy: Mapping[str, Any] | None) -> float | None:
    """The round's largest ε spend; an unbounded one (recorded as None) is inf."""
    if not privacy:
        return None
    parts: list[Any] = []
    client = privacy.get("client")
    if isinstance(client, Mapping):
        parts.append(client.get("epsilon"))
    record = privacy.get("record")
    if isinstance(record, Mapping):
        parts.extend(v.get("epsilon") for v in record.values() if isinstance(v, Mapping))
    values = [math.inf if v is None else float(v) for v in parts]
    return max(values) if values else None


def _heads(path: Path, genesis: Genesis) -> tuple[HeadView, ...]:
    with Ledger.open(path, readonly=True) as ledger:
        stored = ledger.cosigned_heads()
    out = []
    for ch in stored:
        signers = ch.valid_signers(genesis)
        out.append(
            HeadView(
                ch.head.size,
                ch.head.root,
                ch.head.time,
                tuple(sorted(signers)),
                len(signers) >= genesis.quorum,
            )
        )
    return tuple(out)


def _covering(heads: tuple[HeadView, ...], index: int) -> HeadView | None:
    finals = [h for h in heads if h.final and h.size > index]
    return min(finals, key=lambda h: (h.size, h.time)) if finals else None


def read_anchors(folder: Path) -> Anchors:
    """The anchors of the folder's chain: chain.toml's shared chain, else its embedded one."""
    try:
        config = load_chain_config(folder)
        if config is not None:
            opened = AnchorChain.connect(config.url, config.contract)
        elif (folder / CHAIN_DIR / RECORD_FILE).exists():
            opened = AnchorChain.embedded(folder / CHAIN_DIR, readonly=True)
        else:
            return Anchors("none", None, (), "this folder anchors on no chain (no anchors yet)")
        with opened as chain:
            contract = chain.contract_address
            if contract is None:
                return Anchors(chain.description, None, (), "no anchor contract deployed yet")
            return Anchors(chain.description, str(contract), tuple(chain.anchor_log()))
    except ConsortiumError as exc:
        return Anchors("unavailable", None, (), f"cannot read the chain: {exc}")


def read_overview(
    directory: Path,
    *,
    run: str | None = None,
    anchors: bool = True,
    reader: FolderReader | None = None,
) -> Overview:
    """The folder's latest run (or run `run`) with everything the report shows. `reader`: one
    kept between calls (the dashboard), which parses only the entries appended since."""
    reader = reader or FolderReader(node_folder(directory))
    status = reader.read(run)
    genesis = reader.genesis
    folder = reader.dir
    try:
        heads = _heads(folder / LEDGER_FILE, genesis)
    except LedgerError:
        heads = ()
    records: list[tuple[int, RoundRecord, int]] = reader.round_records()
    views = {v.index: v for v in status.rounds}
    rounds = []
    for idx, r, time in records:
        view = views.get(idx)
        if view is None:
            continue
        cover = _covering(heads, idx)
        rounds.append(
            RoundDetail(
                run=r.run,
                round=r.round,
                attempt=r.attempt,
                leader=r.leader,
                participants=r.participants,
                dropouts=r.dropouts,
                index=idx,
                time=time,
                aggregation=r.aggregation,
                model=str(r.model),
                transcript=None if r.secagg is None else str(r.secagg.transcript),
                consent=dict(r.consent),
                erasures={k: sum(e.records for e in v) for k, v in r.erasures.items() if v},
                spend=_spend(r.privacy),
                epsilon=view.epsilon,
                cosigners=() if cover is None else cover.signers,
                final_size=None if cover is None else cover.size,
            )
        )
    return Overview(
        folder=folder,
        status=status,
        genesis=genesis,
        rounds=tuple(rounds),
        heads=heads,
        anchors=read_anchors(folder) if anchors else Anchors("not read", None, ()),
        consent_roots={r.slot: dict(r.consent) for _, r, _ in records},
        slots={r.slot: (r.run, r.round) for _, r, _ in records},
    )


def audit_result(folder: Path) -> AuditResult:
    """Run `consortium audit` on the folder (one worker: it shares the machine with the node)."""
    try:
        report = audit(folder, workers=1)
    except ConsortiumError as exc:
        return AuditResult(False, str(exc))
    facts = (
        ("entries", str(report.entries)),
        ("root", report.root.hex()),
        ("final heads", str(report.final_heads)),
        ("artifacts re-hashed", str(report.artifacts)),
        ("anchored heads matching the chain", str(report.anchored)),
        ("SecAgg+ sums recomputed", str(report.secure_rounds)),
    )
    return AuditResult(
        True,
        f"audit OK: {report.entries} entries of {report.consortium} re-verified",
        facts,
    )
