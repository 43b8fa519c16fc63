"""Replica sync: extend our ledger from a peer's, accepting only a quorum-cosigned extension.

Theory of operation: the peer's final head (quorum cosigned) names a size and root. We first check
a consistency proof from our own current tree (which includes every head we trusted before) to
that head, so a fork is refused before any entry is downloaded. Then we fetch the missing
entries, verify each one's signatures against genesis, recompute the root ourselves and compare it
with the final head. Only then are entries and the head's cosignatures written, in one
transaction. Heads the peer signed that contradict ours are kept as equivocation evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from consortium.core.errors import ForkError, LedgerError, ProofError, SignatureError
from consortium.ledger import merkle
from consortium.ledger.entries import GENESIS_KIND, Entry
from consortium.ledger.heads import CosignedHead, Equivocation, find_equivocations
from consortium.ledger.log import Ledger

#: Entries fetched per request from the source.
CHUNK = 10_000


class LedgerSource(Protocol):
    """What a replica needs from a peer; the network layer implements it over a transport."""

    def size(self) -> int: ...

    def entries(self, start: int, end: int) -> list[bytes]: ...

    def cosigned_heads(self) -> list[CosignedHead]: ...

    def consistency_proof(self, old: int, new: int) -> list[bytes]: ...


class LocalSource:
    """A `Ledger` object seen through the `LedgerSource` protocol."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def size(self) -> int:
        return self.ledger.size

    def entries(self, start: int, end: int) -> list[bytes]:
        return [data for _, data in self.ledger.raw_entries(start, end)]

    def cosigned_heads(self) -> list[CosignedHead]:
        return self.ledger.cosigned_heads()

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return self.ledger.consistency_proof(old, new)


@dataclass
class SyncResult:
    appended: int
    size: int
    head: CosignedHead | None
    equivocations: list[Equivocation] = field(default_factory=list)


def _record_equivocations(replica: Ledger, heads: list[CosignedHead]) -> list[Equivocation]:
    genesis = replica.genesis()
    found: list[Equivocation] = []
    ours = replica.cosigned_heads()
    for theirs in heads:
        for mine in ours:
            found.extend(find_equivocations(mine, theirs, genesis))
    if found:
        replica._record_equivocations(found)
    return found


def sync(replica: Ledger, source: Ledger | LedgerSource) -> SyncResult:
    """Extend `replica` to the source's latest final head; ForkError if that is no extension."""
    src: LedgerSource = LocalSource(source) if isinstance(source, Ledger) else source
    genesis = replica.genesis()
    heads = src.cosigned_heads()
    equivocations = _record_equivocations(replica, heads)
    finals = [h for h in heads if h.is_final(genesis)]
    if not finals:
        return SyncResult(0, replica.size, None, equivocations)
    target = max(finals, key=lambda h: (h.head.size, h.head.time))
    old, new = replica.size, target.head.size

    if new <= old:  # we are ahead or level: the final head must be a prefix of ours
        if replica.root(new) != target.head.root:
            raise ForkError(f"peer's final head for size {new} does not match our ledger")
        _store_heads(replica, heads)
        return SyncResult(0, replica.size, target, equivocations)

    try:
        merkle.verify_consistency(
            old, new, replica.root(), target.head.root, src.consistency_proof(old, new)
        )
    except ProofError as exc:
        raise ForkError(
            f"peer's final head (size {new}) is not an extension of our ledger (size {old}): {exc}"
        ) from exc

    datas: list[bytes] = []
    frontier = list(replica._frontier)
    for start in range(old, new, CHUNK):
        end = min(start + CHUNK, new)
        chunk = src.entries(start, end)
        if len(chunk) != end - start:
            raise LedgerError(f"peer sent {len(chunk)} entries for [{start}, {end})")
        for offset, data in enumerate(chunk):
            entry = Entry.from_bytes(data)
            if entry.kind == GENESIS_KIND:
                raise LedgerError(f"peer's entry {start + offset} is a second genesis")
            try:
                entry.verify(genesis)
            except SignatureError as exc:
                raise SignatureError(f"peer's entry {start + offset}: {exc}") from exc
        replica._extend(frontier, start, [merkle.leaf_hash(d) for d in chunk])
        datas.extend(chunk)
    if merkle.fold([h for _, h in frontier]) != target.head.root:
        raise ForkError(f"peer's entries do not hash to its final head for size {new}")

    with replica._transaction():
        if replica.size != old:
            raise LedgerError("ledger changed during sync; retry")
        replica._insert(datas)
        _store_heads_in_tx(replica, heads)
    return SyncResult(new - old, replica.size, target, equivocations)


def _store_heads_in_tx(replica: Ledger, heads: list[CosignedHead]) -> None:
    """Store every peer head that is a prefix of our (new) ledger, valid cosignatures only."""
    genesis = replica.genesis()
    for ch in heads:
        if ch.head.size > replica.size or replica.root(ch.head.size) != ch.head.root:
            continue
        valid = ch.valid_signers(genesis)
        if valid:  # a head is stored with the cosignatures that vouch for it, never alone
            replica._store_cosignatures(ch.head, [c for c in ch.cosignatures if c.node_id in valid])


def _store_heads(replica: Ledger, heads: list[CosignedHead]) -> None:
    with replica._transaction():
        _store_heads_in_tx(replica, heads)
