"""Replica sync: extend our ledger from a peer's, accepting only a quorum-cosigned extension.

Theory of operation: the peer's final head (quorum cosigned) names a size and root. We first check
a consistency proof from our own current tree (which includes every head we trusted before) to
that head, so a fork is refused before any entry is downloaded. Then we fetch the missing
entries, verify each one's signatures against genesis, recompute the root ourselves and compare it
with the final head. Only then are entries and the head's cosignatures written, in one
transaction. Heads the peer signed that contradict ours are kept as equivocation evidence.

`sync` does both steps; a node calls `verify_extension`, fetches the artifacts the new entries
reference, and only then `apply`s it, so a crash never leaves an entry without its artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from consortium.core.errors import ForkError, LedgerError, ProofError
from consortium.ledger import merkle
from consortium.ledger.entries import GENESIS_KIND, Entry, EntryChecks
from consortium.ledger.heads import CosignedHead, Equivocation, find_equivocations
from consortium.ledger.log import Ledger
from consortium.store.cid import CID, as_cid

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


@dataclass
class Extension:
    """What a sync would write, verified but not yet written: the entries after `old` that hash
    to the peer's final head `target`, and the peer's heads that are heads of the extended log
    (valid cosignatures only). `apply` writes it in one transaction; in between, a node fetches
    the artifacts the entries reference, so it never records an entry it cannot back."""

    old: int
    entries: list[Entry]
    heads: list[CosignedHead]
    target: CosignedHead | None
    equivocations: list[Equivocation] = field(default_factory=list)

    @property
    def new(self) -> int:
        return self.old + len(self.entries)

    def references(self) -> list[CID]:
        """Every CID the new entries reference, each once, in ledger order."""
        seen: dict[str, CID] = {}
        for entry in self.entries:
            for ref in entry.references():
                cid = as_cid(ref)  # base32, as printed everywhere else
                seen.setdefault(str(cid), cid)
        return list(seen.values())


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
    return apply(replica, verify_extension(replica, source))


def verify_extension(replica: Ledger, source: Ledger | LedgerSource) -> Extension:
    """Check what the source offers against `replica` and return it, writing nothing to the
    log (equivocation evidence excepted); ForkError if it is no extension of `replica`."""
    src: LedgerSource = LocalSource(source) if isinstance(source, Ledger) else source
    genesis = replica.genesis()
    heads = src.cosigned_heads()
    equivocations = _record_equivocations(replica, heads)
    finals = [h for h in heads if h.is_final(genesis)]
    old = replica.size
    if not finals:
        return Extension(old, [], [], None, equivocations)
    target = max(finals, key=lambda h: (h.head.size, h.head.time))
    new = target.head.size

    if new <= old:  # we are ahead or level: the final head must be a prefix of ours
        if replica.root(new) != target.head.root:
            raise ForkError(f"peer's final head for size {new} does not match our ledger")
        roots = {h.head.size: replica.root(h.head.size) for h in heads if h.head.size <= old}
        return Extension(old, [], _ours(replica, heads, roots), target, equivocations)

    try:
        merkle.verify_consistency(
            old, new, replica.root(), target.head.root, src.consistency_proof(old, new)
        )
    except ProofError as exc:
        raise ForkError(
            f"peer's final head (size {new}) is not an extension of our ledger (size {old}): {exc}"
        ) from exc

    # Roots of the extended log at every size a peer head names, to keep only heads of it.
    roots = {h.head.size: replica.root(h.head.size) for h in heads if h.head.size <= old}
    sizes = sorted({h.head.size for h in heads if old < h.head.size <= new} | {new})
    entries: list[Entry] = []
    frontier = list(replica._frontier)
    for start in range(old, new, CHUNK):
        end = min(start + CHUNK, new)
        chunk = src.entries(start, end)
        if len(chunk) != end - start:
            raise LedgerError(f"peer sent {len(chunk)} entries for [{start}, {end})")
        # Refusals come in entry order, as one entry after another would find them: the
        # entries before the first that does not decode (or is a second genesis) are verified,
        # on every core, before that one is refused.
        decoded: list[Entry] = []
        unreadable: LedgerError | None = None
        for offset, data in enumerate(chunk):
            try:
                entry = Entry.from_bytes(data)
            except LedgerError as exc:
                unreadable = exc
                break
            if entry.kind == GENESIS_KIND:
                unreadable = LedgerError(f"peer's entry {start + offset} is a second genesis")
                break
            decoded.append(entry)
        checks = EntryChecks.of(decoded, genesis)
        leaves = [merkle.leaf_hash(d) for d in chunk]  # meanwhile
        failure = checks.failure()
        if failure is not None:
            pos, error = failure
            raise type(error)(f"peer's entry {start + pos}: {error}") from error
        if unreadable is not None:
            raise unreadable
        entries.extend(decoded)
        at = start
        for size in [s for s in sizes if start < s <= end]:
            replica._extend(frontier, at, leaves[at - start : size - start])
            at = size
            roots[size] = merkle.fold([h for _, h in frontier])
        replica._extend(frontier, at, leaves[at - start :])
    if roots[new] != target.head.root:
        raise ForkError(f"peer's entries do not hash to its final head for size {new}")
    return Extension(old, entries, _ours(replica, heads, roots), target, equivocations)


def _ours(
    replica: Ledger, heads: list[CosignedHead], roots: dict[int, bytes]
) -> list[CosignedHead]:
    """The peer heads that are heads of our (extended) log, with those of their valid
    cosignatures we do not hold yet."""
    genesis = replica.genesis()
    held = {(ch.head, c.node_id) for ch in replica.cosigned_heads() for c in ch.cosignatures}
    out = []
    for ch in heads:
        if roots.get(ch.head.size) != ch.head.root:
            continue
        valid = ch.valid_signers(genesis)
        cosigs = [
            c for c in ch.cosignatures if c.node_id in valid and (ch.head, c.node_id) not in held
        ]
        if cosigs:
            out.append(CosignedHead(ch.head, cosigs))
    return out


def apply(replica: Ledger, ext: Extension) -> SyncResult:
    """Write a verified extension: its entries and heads in one transaction. LedgerError if
    the replica changed since `verify_extension` (nothing is written then)."""
    if ext.entries or ext.heads:
        replica.append_many(ext.entries, verify=False, heads=ext.heads, expect_size=ext.old)
    return SyncResult(len(ext.entries), replica.size, ext.target, ext.equivocations)
