"""A leader that publishes a forged SecAgg+ transcript (issue 15): voters check the integer sum
against the contributors' signed commitments and recompute the masks themselves, so each
forgery is refused by name under rule `sum-mismatch`.

Each forgery is *consistent*: the leader recomputes the model from its forged transcript, puts
that model and the forged per-member digests in the record, and signs it. So the one check
named in each test is the only one that stops it (remove it and the test fails), and the
voter is a member other than the victim (the victim would also see its own digest misstated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from consortium.core.encoding import decode, encode
from consortium.core.errors import ConsortiumError
from consortium.ledger.entries import Entry
from consortium.protocol import verifier as v
from consortium.protocol.messages import Message, SecAgg
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import Send
from consortium.protocol.secagg import Transcript, commitment, crypto
from consortium.protocol.secagg.client import seed_commitment
from consortium.protocol.secagg.transcript import unmask_words
from consortium.protocol.secure_round import mean_delta, params_from_body
from consortium.protocol.verifier import RecordContext, RecordRejected, verify_round_record
from tests.machines import Wire, cid_of


def _committed(dropout: bool) -> tuple[RoundRecord, RecordContext, Wire]:
    """A committed secure round of five members checked by a contributor; with `dropout`, one
    member sent shares but no masked input, so its mask key is revealed and published."""
    wire = Wire.build(5, secure=True, seed=21)
    wire.begin()
    leader = next(iter(wire.machines.values())).leader(0)
    lost = next(n for n in sorted(wire.machines) if n != leader)

    def drop_input(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        masked = isinstance(msg, SecAgg) and msg.body.get("type") == "secagg/masked-input"
        return [] if dropout and sender == lost and masked else [(to, msg)]

    wire.filter = drop_input
    wire.settle(step=5.0)
    voter = next(n for n in sorted(wire.machines) if n not in (leader, lost))
    p = wire.committed[voter][-1].proposal
    entry = Entry.from_bytes(p.entry)
    ctx = wire.machines[voter]._context(entry.author, p, voting=True)
    record = RoundRecord.from_entry(entry)
    verify_round_record(record, ctx)  # the baseline passes
    assert (lost in record.dropouts) == dropout
    return record, ctx, wire


def _masked_inputs(wire: Wire) -> dict[str, bytes]:
    """What the leader received: each member's masked input (the attacker knows them all)."""
    return {
        a.message.body["sender"]: a.message.body["vector"]
        for _, a in wire.trace
        if isinstance(a, Send)
        and isinstance(a.message, SecAgg)
        and a.message.body.get("type") == "secagg/masked-input"
    }


def _publish(
    record: RoundRecord, ctx: RecordContext, forged: dict[str, Any]
) -> tuple[RoundRecord, RecordContext]:
    """The leader's consistent forgery: the model unmasked from `forged` with no check at all,
    the record's digests and CIDs to match."""
    assert record.secagg is not None and ctx.apply_delta is not None
    data = encode(forged)
    params = params_from_body(dict(record.secagg.params))
    tr = Transcript.from_body(forged)
    width = commitment.sum_width(len(tr.survivors))
    total = commitment.decode_sum(tr.masked_sum, params.vector_length, width)
    masked = (total % 2**32).astype(np.uint32)
    mask_keys = {u: k[1] for u, k in tr.keys.items()}
    words = unmask_words(
        params, masked, list(tr.survivors), tr.revealed_seeds, tr.revealed_mask_keys, mask_keys
    )
    model = ctx.apply_delta(ctx.prev_model, mean_delta(words, params.scale))
    record = replace(
        record,
        updates=tr.input_hashes,
        model=cid_of(model),
        secagg=replace(record.secagg, transcript=cid_of(data)),
    )
    return record, replace(ctx, transcript=data, model=model)


def _refused(record: RoundRecord, ctx: RecordContext, text: str) -> None:
    with pytest.raises(RecordRejected) as info:
        verify_round_record(record, ctx)
    assert info.value.rule == v.SUM
    assert text in str(info.value), str(info.value)


def _victim(record: RoundRecord, ctx: RecordContext) -> str:
    assert ctx.own is not None
    return next(p for p in record.participants if p not in (ctx.own.node, ctx.author))


def _body(ctx: RecordContext) -> dict[str, Any]:
    body: dict[str, Any] = decode(ctx.transcript)
    return body


def _with_sum(body: dict[str, Any], change: Callable[[np.ndarray], None]) -> dict[str, Any]:
    d = len(body["sum"]) // 5
    total = commitment.decode_sum(body["sum"], d, 5)
    change(total)
    return body | {"sum": commitment.encode_sum(total, 5)}


def test_a_wrong_sum_is_refused() -> None:
    record, ctx, _ = _committed(dropout=False)

    def plus_one(total: np.ndarray) -> None:
        total[0] += 1

    _refused(
        *_publish(record, ctx, _with_sum(_body(ctx), plus_one)),
        "does not match the contributors' commitments",
    )


def test_a_wrong_sum_that_agrees_mod_2_32_is_refused() -> None:
    """A sum off by 2**32 in one word unmasks to the very same model: still refused, since the
    commitments bind the integer sum (and so its width and layout)."""
    record, ctx, _ = _committed(dropout=False)

    def wrap(total: np.ndarray) -> None:
        if total[0] < 2**32:
            total[0] += np.uint64(2**32)
        else:
            total[0] -= np.uint64(2**32)

    forged = _publish(record, ctx, _with_sum(_body(ctx), wrap))
    assert forged[1].model == ctx.model
    _refused(*forged, "does not match the contributors' commitments")


def test_a_shifted_commitment_is_refused_by_its_missing_signature() -> None:
    """The leader adds a vector of its choosing to the victim's input (it cannot remove the
    victim's pairwise masks, but it can shift what the victim contributed): it moves the
    victim's commitment and the sum to match, so only the victim's signature is missing."""
    record, ctx, _ = _committed(dropout=False)
    victim = _victim(record, ctx)
    body = _body(ctx)
    d = len(body["sum"]) // 5
    shift = np.zeros(d, dtype=np.uint64)
    shift[:-1] = 10**6  # the weight word is left alone: the model just moves

    def shifted(total: np.ndarray) -> None:
        total += shift

    forged = _with_sum(body, shifted)
    moved = commitment.parse(body["commitments"][victim]) + commitment.commit(shift)
    forged["commitments"] = body["commitments"] | {victim: moved.to_compressed_bytes()}
    published = _publish(record, ctx, forged)
    assert published[1].model != ctx.model
    _refused(*published, f"commitment of {victim!r} is not signed by")


def _fake_seed(
    record: RoundRecord, ctx: RecordContext, victim: str, sign: bool
) -> tuple[bytes, tuple[RoundRecord, RecordContext]]:
    """A made-up seed whose unmasked sum still carries a positive weight (about one try in two:
    the leader can search), published with or without a matching made-up seed commitment."""
    body = _body(ctx)
    for i in range(64):
        fake = bytes([i]) * 32
        forged = body | {"seeds": body["seeds"] | {victim: fake}}
        if sign:
            made_up = seed_commitment(body["round"], victim, fake)
            forged["seed_commitments"] = body["seed_commitments"] | {victim: made_up}
        try:
            return fake, _publish(record, ctx, forged)
        except ConsortiumError:
            continue
    raise AssertionError("no seed gave a positive weight")


def test_a_wrong_revealed_seed_is_refused() -> None:
    """A made-up self-mask seed leaves the victim's self mask in the sum: a garbage model that
    unmasks 'consistently'. Refused against the seed commitment, and a made-up commitment is
    refused because the victim signed its own with its input."""
    record, ctx, _ = _committed(dropout=False)
    victim = _victim(record, ctx)
    _, published = _fake_seed(record, ctx, victim, sign=False)
    assert published[1].model != ctx.model
    _refused(*published, f"revealed seed of {victim!r} does not match its commitment")
    _, published = _fake_seed(record, ctx, victim, sign=True)
    _refused(*published, f"commitment of {victim!r} is not signed by")


def test_a_made_up_mask_key_of_a_dropped_member_is_refused() -> None:
    """A made-up mask key for a dropped member rebuilds the wrong pairwise masks (a garbage
    model): refused against its public key, and a made-up public key is refused because the
    dropped member signed its own."""
    record, ctx, _ = _committed(dropout=True)
    body = _body(ctx)
    (dropped,) = body["dropped_keys"]
    enc, _, sig = body["keys"][dropped]
    for with_key in (False, True):
        for i in range(1, 64):
            secret = bytes([i]) * 32
            forged = body | {"dropped_keys": {dropped: secret}}
            if with_key:
                keys = body["keys"] | {dropped: [enc, crypto.public_bytes(secret), sig]}
                forged["keys"] = keys
            try:
                published = _publish(record, ctx, forged)
            except ConsortiumError:
                continue  # no positive weight: the leader tries another key
            break
        assert published[1].model != ctx.model
        text = (
            f"public keys of {dropped!r} are not signed by"
            if with_key
            else f"revealed mask key of {dropped!r} does not match its public key"
        )
        _refused(*published, text)


def test_a_version_1_transcript_is_refused_by_name() -> None:
    record, ctx, _ = _committed(dropout=False)
    old = {k: x for k, x in _body(ctx).items() if k != "v"}
    data = encode(old)
    assert record.secagg is not None
    record = replace(record, secagg=replace(record.secagg, transcript=cid_of(data)))
    _refused(record, replace(ctx, transcript=data), "transcript version 1 is not supported")
    with pytest.raises(Exception, match="version 1"):
        Transcript.from_body(old)
