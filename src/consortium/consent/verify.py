"""Check a node's consent registry against itself and against what the node committed on the ledger.

The auditor's consent check (`consortium audit` on a node folder that holds `consent.sqlite`):

1. the history: events numbered 1..N with no gap, well-typed, each event's blind matching its
   identifiers under the record's salt (records without a salt must be erased), and the hash
   chain recomputed from the events equal to the chain stored with each of them;
2. the current state (records, consent) is what the history replays to;
3. every stored round: its round head recomputed from the chain at the number of events it saw and
   its start time, its leaves sorted and hashing to its root, every selected record (not erased
   since) salted, committed in the leaves and consented for the purpose at the round's start in
   the history the round saw;
4. every commitment the node made on the ledger (`committed`, by ledger slot) is stored, equal.

Since the ledger fixes each round's head, an event deleted or rewritten before a committed round
fails (3) or (4) even if whoever did it recomputed the whole chain. Events after the last
committed round are protected only by the chain itself: their salts are in the file, so whoever
holds it can rewrite them and recompute the chain; nobody else has seen them yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from consortium.consent.commitments import HASH_SIZE, RoundCommitment, commitment, leaves_root
from consortium.consent.history import EMPTY_CHAIN, blind, chain_step, event_digest, round_head
from consortium.consent.record_ids import RecordIdError, decode_ids
from consortium.consent.registry import (
    EVENT_KINDS,
    SALT_SIZE,
    ConsentError,
    ConsentRegistry,
    Event,
    Replay,
    check_name,
)


def verify_registry(registry: ConsentRegistry, committed: Mapping[int, RoundCommitment]) -> None:
    """Raise ConsentError naming the first event or round (by ledger slot) that does not check."""
    salts = _salts(registry.raw_rows("salts"))
    erased = _erased(registry.raw_rows("records"))
    events = _events(registry.raw_rows("events"))
    chains = _check_chain(events, salts, erased)
    registry.verify_state()
    for rid in salts:
        if rid not in erased:
            raise ConsentError(f"a salt is stored for record {rid}, which is unknown")
        if erased[rid] is not None:
            raise ConsentError(f"record {rid} is erased, yet its salt was not shredded")
    n_erased = sum(1 for t in erased.values() if t is not None)
    stored = _check_rounds(registry.raw_rows("rounds"), events, chains, salts, n_erased)
    for slot, c in sorted(committed.items()):
        row = stored.get((slot, c.purpose))
        if row is None:
            raise ConsentError(
                f"round at ledger entry {slot}: the registry holds no record of the consent "
                "commitment this node made there (deleted)"
            )
        if row != (c.root, c.count, c.head):
            raise ConsentError(
                f"round at ledger entry {slot}: the stored commitment differs from the one on "
                "the ledger (its records, count or consent history was changed)"
            )


def _salts(rows: Sequence[tuple[Any, ...]]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for rid, salt in rows:
        if not isinstance(rid, str) or not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
            raise ConsentError(f"malformed salt row for record {rid!r}")
        out[rid] = salt
    return out


def _erased(rows: Sequence[tuple[Any, ...]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for rid, subject, erased in rows:
        if not isinstance(rid, str) or not isinstance(subject, str):
            raise ConsentError(f"malformed record row {rid!r}")
        if erased is not None and not isinstance(erased, float):
            raise ConsentError(f"record {rid}: malformed erasure time")
        out[rid] = erased
    return out


def _events(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Event, bytes, bytes]]:
    """(event, blind, stored chain) per row, shape-checked, numbered 1..N without a gap."""
    out: list[tuple[Event, bytes, bytes]] = []
    for n, row in enumerate(rows, 1):
        seq, at, kind, subject, rid, purpose, expires, blinded, chain = row
        if seq != n:
            raise ConsentError(f"event {n} is missing (the next stored event is {seq!r})")
        if (
            not isinstance(at, float)
            or kind not in EVENT_KINDS
            or not isinstance(subject, str)
            or not isinstance(rid, str)
            or (purpose is None) != (kind == "erase")
            or not isinstance(purpose, str | None)
            or not isinstance(expires, float | None)
            or not isinstance(blinded, bytes)
            or len(blinded) != HASH_SIZE
            or not isinstance(chain, bytes)
            or len(chain) != HASH_SIZE
        ):
            raise ConsentError(f"event {n}: malformed (a field has the wrong type or size)")
        out.append((Event(seq, at, kind, subject, rid, purpose, expires), blinded, chain))
    return out


def _check_chain(
    events: Sequence[tuple[Event, bytes, bytes]],
    salts: Mapping[str, bytes],
    erased: Mapping[str, float | None],
) -> list[bytes]:
    """Recompute the chain; return it after each prefix (chains[k]: after k events)."""
    chains = [EMPTY_CHAIN]
    for e, blinded, stored in events:
        where = f"event {e.seq}"
        salt = salts.get(e.record_id)
        if salt is None:
            if erased.get(e.record_id) is None:
                raise ConsentError(f"{where}: its record has no salt, yet is not erased")
        elif blind(salt, e.record_id, e.subject) != blinded:
            raise ConsentError(f"{where}: its subject or record does not match its salted blind")
        chain = chain_step(
            chains[-1], event_digest(e.seq, e.kind, e.at, e.purpose, e.expires, blinded)
        )
        if chain != stored:
            raise ConsentError(
                f"{where}: the history chain breaks here (an event was deleted, inserted or "
                "rewritten)"
            )
        chains.append(chain)
    return chains


def _check_rounds(
    rows: Sequence[tuple[Any, ...]],
    events: Sequence[tuple[Event, bytes, bytes]],
    chains: Sequence[bytes],
    salts: Mapping[str, bytes],
    erased: int,
) -> dict[tuple[int, str], tuple[bytes, int, bytes]]:
    """Check every stored round, in the order of the history they saw; return
    (slot, purpose) -> (root, count, head). `erased`: how many records are erased now."""
    out: dict[tuple[int, str], tuple[bytes, int, bytes]] = {}
    replay, seen = Replay(), 0

    def order(r: tuple[Any, ...]) -> tuple[int, int]:
        return (r[7], r[0]) if isinstance(r[7], int) and isinstance(r[0], int) else (-1, 0)

    for row in sorted(rows, key=order):
        slot, purpose, at, count, root, leaves, ids, k, head = row
        where = f"round at ledger entry {slot} ({purpose!r})"
        if not (
            isinstance(slot, int)
            and isinstance(purpose, str)
            and isinstance(at, float)
            and isinstance(count, int)
            and isinstance(root, bytes)
            and isinstance(leaves, bytes)
            and isinstance(ids, bytes)
            and isinstance(k, int)
            and isinstance(head, bytes)
            and len(leaves) == HASH_SIZE * count
        ):
            raise ConsentError(f"{where}: malformed (a field has the wrong type or size)")
        try:
            check_name("purpose", purpose)
        except ConsentError as exc:
            raise ConsentError(f"{where}: {exc}") from None
        if not 0 <= k < len(chains):
            raise ConsentError(f"{where}: it saw {k} events, the history has {len(chains) - 1}")
        if round_head(chains[k], k, at) != head:
            raise ConsentError(
                f"{where}: its head does not match events 1..{k} of the history and its start "
                "time (an event was deleted or rewritten)"
            )
        sorted_leaves = [leaves[i : i + HASH_SIZE] for i in range(0, len(leaves), HASH_SIZE)]
        try:
            hashes_to_root = leaves_root(sorted_leaves) == root
        except ConsentError as exc:  # not sorted and distinct
            raise ConsentError(f"{where}: its leaves: {exc}") from None
        if not hashes_to_root:
            raise ConsentError(f"{where}: its leaves do not hash to its root")
        while seen < k:  # the state this round was selected from
            replay.apply(events[seen][0])
            seen += 1
        try:
            selected = decode_ids(ids)
        except RecordIdError as exc:  # not UTF-8, or not sorted and distinct
            raise ConsentError(f"{where}: its record list: {exc}") from None
        _check_selection(where, selected, sorted_leaves, salts, replay, row, erased)
        out[(slot, purpose)] = (root, count, head)
    return out


def _check_selection(
    where: str,
    ids: list[str],
    leaves: list[bytes],
    salts: Mapping[str, bytes],
    replay: Replay,
    row: tuple[Any, ...],
    erased: int,
) -> None:
    """The records a round still names (erasure removes ids) were salted, committed to and
    consented for its purpose at its start."""
    slot, purpose, at = row[0], row[1], row[2]
    if len(ids) > len(leaves):
        raise ConsentError(f"{where}: its record list is not a sorted subset of its leaves")
    committed = set(leaves)
    for rid in ids:
        salt = salts.get(rid)
        if salt is None or commitment(salt, rid, purpose, slot) not in committed:
            raise ConsentError(f"{where}: it names a record its leaves do not commit to")
        if not replay.active(rid, purpose, at):
            raise ConsentError(
                f"{where}: it used a record whose consent did not cover it at its start"
            )
    if len(leaves) - len(ids) > erased:  # only erasure removes a record from the list
        raise ConsentError(f"{where}: it names fewer records than it committed to")
