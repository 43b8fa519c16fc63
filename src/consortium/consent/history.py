"""The consent history as a hash chain, so a deleted or rewritten event cannot go unnoticed.

Every event (grant, withdraw, expire-change, erase) gets a 32-byte *blind* and a *digest*:

    blind  = SHA-256(tag "consent-blind" ‖ salt ‖ record id (u64) ‖ subject)        numeric id
    blind  = SHA-256(tag "consent-blind-text" ‖ salt ‖ record id (text) ‖ subject)  any other
    digest = SHA-256(tag "consent-event" ‖ seq (u64) ‖ kind ‖ at (f64) ‖ purpose ‖ expires ‖ blind)
    chain_k = SHA-256(tag "consent-chain" ‖ chain_{k-1} ‖ digest_k),   chain_0 = 32 zero bytes

(`consent.record_ids`: a numeric record id is hashed as the integer it was before record ids were
text, so the chains of earlier registries are unchanged; text is length-prefixed UTF-8.)
The identifiers enter only through the blind, salted with the record's salt, so the chain reveals
nothing about anyone. Erasure deletes the salt (crypto-shredding) but keeps the stored blind: the
chain, and every non-identifying field of the erased record's events, stay verifiable; only the
link from those events to a pseudonym and record id is gone, which is what erasure means.

Each round a node commits to the history it selected under (`round_head`): the chain after its
first `events` events and the round's start time. The head goes into the node's consent
commitment, so the ledger fixes the history every round was selected from.
"""

from __future__ import annotations

import struct

from consortium.consent.record_ids import numeric
from consortium.core.encoding import sha256

HASH_SIZE = 32
#: The chain before the first event.
EMPTY_CHAIN = bytes(HASH_SIZE)


def _tag(name: str) -> bytes:
    tag = f"consortium/v1/{name}".encode()
    return bytes([len(tag)]) + tag


_BLIND = _tag("consent-blind")
_BLIND_TEXT = _tag("consent-blind-text")
_EVENT = _tag("consent-event")
_CHAIN = _tag("consent-chain")
_HEAD = _tag("consent-head")


def _text(value: str | None) -> bytes:
    """Length-prefixed UTF-8; None (no purpose, no expiry) differs from every string."""
    if value is None:
        return b"\xff\xff"
    data = value.encode("utf-8", "surrogateescape")  # as read from a damaged file, see registry
    return len(data).to_bytes(2, "big") + data


def _time(value: float | None) -> bytes:
    return b"\x00" if value is None else b"\x01" + struct.pack(">d", value)


def blind(salt: bytes, record_id: str, subject: str) -> bytes:
    """The salted stand-in for an event's identifiers."""
    n = numeric(record_id)
    if n is not None:
        return sha256(_BLIND + salt + n.to_bytes(8, "big") + _text(subject))
    return sha256(_BLIND_TEXT + salt + _text(record_id) + _text(subject))


def event_digest(
    seq: int, kind: str, at: float, purpose: str | None, expires: float | None, blinded: bytes
) -> bytes:
    """What the chain covers of one event: every field, the identifiers only through `blinded`."""
    return sha256(
        _EVENT
        + seq.to_bytes(8, "big")
        + _text(kind)
        + _time(at)
        + _text(purpose)
        + _time(expires)
        + blinded
    )


def chain_step(previous: bytes, digest: bytes) -> bytes:
    return sha256(_CHAIN + previous + digest)


def round_head(chain: bytes, events: int, at: float) -> bytes:
    """What a round commits to: the history of its first `events` events, selected at `at`."""
    return sha256(_HEAD + chain + events.to_bytes(8, "big") + _time(at))
