"""Check many stored ledger entries at once, on every core: the auditor's hot loop.

Each worker runs, on consecutive stored entries, exactly what a node runs on entries it appends
(`Entry.from_bytes`, then `EntryChecks`): the canonical dag-cbor decoder (cbor2's C codec behind
our checks, `core.encoding.decode`) and every signature over the signed bytes sliced from the
stored bytes (`Entry.signed_bytes`), after the payload prefix `len(tag) ‖ tag ‖ genesis digest`.
Any stored byte that differs from what the author signed therefore fails the signature (or, for
the signatures themselves, changes the leaf hash under the cosigned root), and so does a record
signed for another consortium. Each entry is decoded once and hashed once here; the auditor
reuses the leaf hashes (roots, `Ledger.fsck`) and decodes again only the few records the round
verifier needs (CIDs, which it needs, do not cross process boundaries).

This module lives with the ledger, not the auditor, so that a worker process imports only the
ledger (well under a second) to run it, not the auditor's chain and learning stacks (seconds).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from consortium.core.errors import LedgerError
from consortium.ledger.entries import Entry, EntryChecks
from consortium.store.cid import cid_key

CHUNK = 5000


@dataclass
class ChunkResult:
    leaf_hashes: list[bytes] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    references: list[tuple[str, int]] = field(default_factory=list)
    wanted: list[int] = field(default_factory=list)  # indices of entries of the `want` kinds
    error: tuple[int, str] | None = None


def check_chunk(
    rows: Sequence[tuple[int, bytes]],
    keys: dict[str, tuple[str, bytes]],
    consortium: bytes,
    want: frozenset[str] = frozenset(),
) -> ChunkResult:
    """Verify consecutive non-genesis entries of the consortium whose genesis digest is
    `consortium` (`keys`: `member_keys(genesis)`); stop at the first bad one (its index and
    reason), as one entry after another would find it."""
    out = ChunkResult()
    entries: list[Entry] = []
    unreadable: tuple[int, str] | None = None
    for idx, data in rows:
        try:
            entries.append(Entry.from_bytes(data))
        except LedgerError as exc:
            unreadable = (idx, str(exc))
            break
    failure = EntryChecks(entries, keys, consortium, workers=1).failure()
    if failure is not None:
        out.error = (rows[failure[0]][0], str(failure[1]))
        return out
    for (idx, data), entry in zip(rows, entries, strict=False):
        for ref in entry.references():
            out.references.append((cid_key(ref), idx))
        out.kinds[entry.kind] = out.kinds.get(entry.kind, 0) + 1
        if entry.kind in want:
            out.wanted.append(idx)
        out.leaf_hashes.append(hashlib.sha256(b"\x00" + data).digest())
    out.error = unreadable
    return out
