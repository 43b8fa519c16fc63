"""`verify_round_record`: each refusal rule, triggered by exactly one change to a valid record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from consortium.consent.commitments import RoundCommitment
from consortium.ledger.entries import Entry
from consortium.protocol import verifier as v
from consortium.protocol.record import RecordFormatError, RoundRecord
from consortium.protocol.verifier import RecordContext, RecordRejected, verify_round_record
from tests.machines import Wire, cid_of, model

Case = Callable[[RoundRecord, RecordContext], tuple[RoundRecord, RecordContext]]


def _valid(secure: bool) -> tuple[RoundRecord, RecordContext]:
    """A committed round and the context a participant (not the leader) checked it in."""
    wire = Wire.build(4, secure=secure, seed=3)
    wire.begin()
    wire.settle()
    voter = next(n for n, m in wire.machines.items() if m.leader(0) != n)
    machine = wire.machines[voter]
    p = wire.committed[voter][-1].proposal
    entry = Entry.from_bytes(p.entry)
    ctx = machine._context(entry.author, p, voting=True)
    record = RoundRecord.from_entry(entry)
    verify_round_record(record, ctx)  # the baseline passes
    assert ctx.own is not None and ctx.own.node in record.participants
    return record, ctx


def _without(r: RoundRecord, node: str) -> RoundRecord:
    keep = tuple(p for p in r.participants if p != node)
    return replace(
        r,
        participants=keep,
        dropouts=tuple(sorted((*r.dropouts, node))),
        samples={k: x for k, x in r.samples.items() if k != node},
        updates={k: x for k, x in r.updates.items() if k != node},
        metrics={k: x for k, x in r.metrics.items() if k != node},
        consent={k: x for k, x in r.consent.items() if k != node},
    )


def _me(c: RecordContext) -> str:
    assert c.own is not None
    return c.own.node


PLAIN: dict[str, Case] = {
    v.RUN: lambda r, c: (replace(r, run="another-run"), c),
    v.ATTEMPT: lambda r, c: (replace(r, attempt=1), c),
    v.LEADER: lambda r, c: (r, replace(c, author=_me(c))),
    v.MEMBERS: lambda r, c: (replace(r, participants=tuple(sorted((*r.participants, "fake")))), c),
    v.CONTRIBUTORS: lambda r, c: (r, replace(c, min_contributors=len(r.participants) + 1)),
    v.SHAPE: lambda r, c: (replace(r, samples=dict(list(r.samples.items())[1:])), c),
    v.OWN_MISSING: lambda r, c: (_without(r, _me(c)), c),
    v.OWN_MISSTATED: lambda r, c: (replace(r, samples={**r.samples, _me(c): 999}), c),
    v.PREV_MODEL: lambda r, c: (r, replace(c, prev_model=model([5] * 8))),
    v.MODEL: lambda r, c: (r, replace(c, model=model([5] * 8))),
    v.AGGREGATION: lambda r, c: (replace(r, aggregation="secagg+"), c),
    v.PRIVACY: lambda r, c: (replace(r, privacy={"purpose": "research"}), c),
    v.CONSENT: lambda r, c: (
        replace(
            r, consent={"not-a-participant": RoundCommitment(bytes(32), 1, "research", bytes(32))}
        ),
        c,
    ),
    v.METRICS: lambda r, c: (
        replace(r, metrics={p: {"accuracy": 0.9} for p in r.participants}),
        c,
    ),
}


@pytest.mark.parametrize("rule", sorted(PLAIN))
def test_each_rule_refuses_by_name(rule: str) -> None:
    record, ctx = _valid(secure=False)
    bad, bad_ctx = PLAIN[rule](record, ctx)
    with pytest.raises(RecordRejected) as exc:
        verify_round_record(bad, bad_ctx)
    assert exc.value.rule == rule, str(exc.value)


def test_a_secure_sum_that_is_not_the_published_aggregate_is_refused() -> None:
    record, ctx = _valid(secure=True)
    evil = model([9] * 8)
    with pytest.raises(RecordRejected) as exc:
        verify_round_record(replace(record, model=cid_of(evil)), replace(ctx, model=evil))
    assert exc.value.rule == v.SUM and "secure aggregate" in str(exc.value)
    with pytest.raises(RecordRejected) as exc:
        verify_round_record(record, replace(ctx, transcript=ctx.transcript + b"\x00"))
    assert exc.value.rule == v.SUM


def test_the_codec_refuses_unknown_sections_and_versions() -> None:
    record, _ = _valid(secure=False)
    body = record.to_body()
    assert RoundRecord.from_body(body) == record
    with pytest.raises(RecordFormatError, match="unknown field"):
        RoundRecord.from_body({**body, "smuggled": "alice"})
    with pytest.raises(RecordFormatError, match="unsupported version"):
        RoundRecord.from_body({**body, "v": 1})
    with pytest.raises(RecordFormatError, match="missing model"):
        RoundRecord.from_body({k: x for k, x in body.items() if k != "model"})


def test_a_record_that_changes_the_voters_consent_history_head_is_refused() -> None:
    """The head of the voter's consent history is part of its commitment: a leader cannot
    publish another one for it."""
    record, ctx = _valid(secure=False)
    me, own = _me(ctx), ctx.own
    assert own is not None
    mine = RoundCommitment(bytes(32), 5, "research", b"\x01" * 32)
    ctx = replace(ctx, own=replace(own, consent=mine))
    verify_round_record(replace(record, consent={**record.consent, me: mine}), ctx)
    other = replace(mine, head=b"\x02" * 32)
    with pytest.raises(RecordRejected, match="misstates this node's consent commitment"):
        verify_round_record(replace(record, consent={**record.consent, me: other}), ctx)
