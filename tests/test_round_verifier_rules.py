"""`verify_round_record` and the record codec: one test per check, each triggered by one change.

`tests/test_round_verifier.py` refuses one record per rule; several rules have more than one check
(`_require` call or wrapped failure), and each check here is the only one a change trips, so
every check has a test that fails without it (`benchmarks/mutations.py` shows it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pytest

from consortium.consent.commitments import RoundCommitment
from consortium.core.errors import ConsortiumError
from consortium.ledger.entries import Entry
from consortium.privacy.budget import Budget
from consortium.privacy.config import PrivacyConfig
from consortium.protocol import verifier as v
from consortium.protocol.messages import Message, SecAgg
from consortium.protocol.privacy_round import RecordParams, RoundPrivacy
from consortium.protocol.record import Erasure, RecordFormatError, RoundRecord
from consortium.protocol.secure_round import params_from_body
from consortium.protocol.verifier import RecordContext, RecordRejected, verify_round_record
from tests.machines import Wire, cid_of

Change = Callable[[RoundRecord, RecordContext], tuple[RoundRecord, RecordContext]]


def _valid(secure: bool = False, round_no: int = 1) -> tuple[RoundRecord, RecordContext]:
    """A committed round and the context a participant (not the leader) checked it in."""
    wire = Wire.build(4, secure=secure, seed=3)
    wire.begin(round_no)
    wire.settle()
    voter = next(n for n, m in wire.machines.items() if m.leader(0) != n)
    p = wire.committed[voter][-1].proposal
    entry = Entry.from_bytes(p.entry)
    ctx = wire.machines[voter]._context(entry.author, p, voting=True)
    record = RoundRecord.from_entry(entry)
    verify_round_record(record, ctx)  # the baseline passes
    assert ctx.own is not None and ctx.own.node in record.participants
    return record, ctx


def _slug(text: str) -> str:
    """A test id without spaces: the refusal text, words joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def _me(c: RecordContext) -> str:
    assert c.own is not None
    return c.own.node


def _other(r: RoundRecord, c: RecordContext) -> str:
    return next(p for p in r.participants if p != _me(c))


def _refused(record: RoundRecord, ctx: RecordContext, rule: str, text: str) -> None:
    with pytest.raises(RecordRejected) as exc:
        verify_round_record(record, ctx)
    assert exc.value.rule == rule, str(exc.value)
    assert text in str(exc.value), str(exc.value)


# -- plaintext rounds -----------------------------------------------------------------------------

PLAIN: dict[str, tuple[str, str, Change]] = {
    "dropouts": (
        v.MEMBERS,
        "dropouts are not exactly the members that did not contribute",
        lambda r, c: (replace(r, dropouts=r.participants[:1]), c),
    ),
    "metrics": (
        v.SHAPE,
        "the record carries metrics of nodes that did not contribute",
        lambda r, c: (replace(r, metrics={**r.metrics, "not-a-participant": {}}), c),
    ),
    "own-update": (
        v.OWN_MISSTATED,
        "the record commits to an update this node did not send",
        lambda r, c: (replace(r, updates={**r.updates, _me(c): bytes(32)}), c),
    ),
    "own-consent": (
        v.OWN_MISSTATED,
        "the record misstates this node's consent commitment",
        lambda r, c: (
            replace(r, consent={_me(c): RoundCommitment(bytes(32), 1, "research", bytes(32))}),
            c,
        ),
    ),
    "own-erasures": (
        v.OWN_MISSTATED,
        "the record misstates this node's erasures",
        lambda r, c: (replace(r, erasures={_me(c): (Erasure(1, 5),)}), c),
    ),
}


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_each_plaintext_check_refuses_by_name(case: str) -> None:
    rule, text, change = PLAIN[case]
    record, ctx = _valid()
    _refused(*change(record, ctx), rule, text)


# -- secure rounds --------------------------------------------------------------------------------


def _secagg(r: RoundRecord, **changes: Any) -> RoundRecord:
    assert r.secagg is not None
    return replace(r, secagg=replace(r.secagg, **changes))


def _no_arithmetic(prev: bytes, delta: Any) -> bytes:
    raise ConsortiumError("the delta does not fit the model")


def _malformed_params(r: RoundRecord, c: RecordContext) -> tuple[RoundRecord, RecordContext]:
    assert r.secagg is not None
    return _secagg(r, params={k: x for k, x in r.secagg.params.items() if k != "k"}), c


def _other_params(r: RoundRecord, c: RecordContext) -> tuple[RoundRecord, RecordContext]:
    assert r.secagg is not None
    return _secagg(r, params={**r.secagg.params, "clip": r.secagg.params["clip"] + 1.0}), c


def _garbled_transcript(r: RoundRecord, c: RecordContext) -> tuple[RoundRecord, RecordContext]:
    garbled = c.transcript + b"\x00"  # its CID in the record: only the bytes fail
    return _secagg(r, transcript=cid_of(garbled)), replace(c, transcript=garbled)


SECURE: dict[str, Change] = {
    "malformed secure-aggregation parameters": _malformed_params,
    "secure-aggregation parameters differ from the ones every node derives": _other_params,
    "the transcript bytes do not match the transcript CID": lambda r, c: (
        _secagg(r, transcript=cid_of(b"another transcript")),
        c,
    ),
    "transcript does not verify": _garbled_transcript,
    "the record and the transcript disagree on contributors": lambda r, c: (
        replace(r, updates={**r.updates, _other(r, c): bytes(32)}),
        c,
    ),
    "the delta does not fit the model": lambda r, c: (r, replace(c, apply_delta=_no_arithmetic)),
}


@pytest.mark.parametrize("text", sorted(SECURE), ids=_slug)
def test_each_secure_sum_check_refuses_by_name(text: str) -> None:
    record, ctx = _valid(secure=True)
    _refused(*SECURE[text](record, ctx), v.SUM, text)


# -- differential privacy -------------------------------------------------------------------------

DP = (1.5, 0.01, 100)


def _privacy(epsilon: float = 10.0) -> RoundPrivacy:
    config = PrivacyConfig(unit="record", noise_multiplier=DP[0])
    return RoundPrivacy(config, Budget(epsilon, 1e-5, "research"), [])


def _spend(nodes: Iterable[str]) -> dict[str, Any]:
    """The record-level spend of round 1 with every one of `nodes` at `DP`."""
    return _privacy().body(1, dict.fromkeys(nodes, DP))


def _with_dp(c: RecordContext, dp: RecordParams) -> RecordContext:
    assert c.own is not None
    return replace(c, own=replace(c.own, dp=dp))


def _valid_dp() -> tuple[RoundRecord, RecordContext]:
    """The committed round 1 as if every participant had trained with DP-SGD at `DP`."""
    record, ctx = _valid()
    record = replace(record, privacy=_spend(record.participants))
    ctx = _with_dp(replace(ctx, privacy=_privacy()), DP)
    verify_round_record(record, ctx)  # the baseline passes
    return record, ctx


PRIVACY: dict[str, Change] = {
    "the record lacks the round's privacy spend": lambda r, c: (replace(r, privacy=None), c),
    "malformed DP-SGD parameters": lambda r, c: (
        replace(r, privacy={**(r.privacy or {}), "record": {_me(c): {"steps": 1}}}),
        c,
    ),
    "the record-level spend does not cover exactly the contributors": lambda r, c: (
        replace(r, privacy=_spend(p for p in r.participants if p != _other(r, c))),
        c,
    ),
    "the record misstates this node's DP-SGD parameters": lambda r, c: (
        r,
        _with_dp(c, (DP[0], DP[1] * 2, DP[2])),
    ),
    "the round would break the privacy budget": lambda r, c: (
        r,
        replace(c, privacy=_privacy(epsilon=0.01)),
    ),
}


@pytest.mark.parametrize("text", sorted(PRIVACY), ids=_slug)
def test_each_privacy_check_refuses_by_name(text: str) -> None:
    record, ctx = _valid_dp()
    _refused(*PRIVACY[text](record, ctx), v.PRIVACY, text)


# -- client-level DP under SecAgg+: the noise shares a sum must carry -----------------------------


def _secure_with_a_dropout() -> tuple[RoundRecord, RecordContext]:
    """A committed secure round of five members whose START named all five and whose sum holds
    four (one member's keys never reached the leader), checked by a contributor."""
    wire = Wire.build(5, secure=True, seed=4)
    wire.begin()
    leader = next(iter(wire.machines.values())).leader(0)
    lost = next(n for n in sorted(wire.machines) if n != leader)

    def drop_keys(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        keys = isinstance(msg, SecAgg) and msg.body.get("type") == "secagg/advertise-keys"
        return [] if sender == lost and keys else [(to, msg)]

    wire.filter = drop_keys
    wire.settle(step=5.0)
    voter = next(n for n in sorted(wire.machines) if n not in (leader, lost))
    p = wire.committed[voter][-1].proposal
    entry = Entry.from_bytes(p.entry)
    ctx = wire.machines[voter]._context(entry.author, p, voting=True)
    record = RoundRecord.from_entry(entry)
    verify_round_record(record, ctx)  # the baseline passes
    assert record.secagg is not None and lost not in record.participants
    assert len(params_from_body(dict(record.secagg.params)).participants) == 5
    return record, ctx


def _client_dp(dropout_tolerance: int) -> RoundPrivacy:
    config = PrivacyConfig(unit="client", noise_multiplier=1.0, dropout_tolerance=dropout_tolerance)
    return RoundPrivacy(config, Budget(10.0, 1e-5, "research"), [])


NOISE: dict[str, Change] = {
    # Sized for no dropout and no colluder: each of the five carries a fifth of the noise.
    "4 noise shares in the sum, it was sized for 5": lambda r, c: (
        r,
        replace(c, privacy=_client_dp(0), colluders=0),
    ),
    "5 participants cannot carry the noise when 0 may drop and 5 may collude": lambda r, c: (
        r,
        replace(c, privacy=_client_dp(0), colluders=5),
    ),
}


@pytest.mark.parametrize("text", sorted(NOISE), ids=_slug)
def test_each_client_noise_check_refuses_by_name(text: str) -> None:
    record, ctx = _secure_with_a_dropout()
    _refused(*NOISE[text](record, ctx), v.PRIVACY, text)
    # Sized for one dropout, four shares are enough: the next check is the spend's.
    lenient = replace(ctx, privacy=_client_dp(1), colluders=0)
    _refused(record, lenient, v.PRIVACY, "the record lacks the round's privacy spend")


# -- the codec ------------------------------------------------------------------------------------


def _first(body: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """`body` with the first participant's entry of map `key` set to `value`."""
    node = body["participants"][0]
    return {**body, key: {**body[key], node: value}}


CODEC: dict[str, Callable[[dict[str, Any]], Any]] = {
    "the body is not a map": lambda b: list(b.items()),
    "sample counts must be positive integers": lambda b: _first(b, "samples", 0),
    "update commitments must be 32-byte hashes": lambda b: _first(b, "updates", b"short"),
    "metrics must be maps": lambda b: _first(b, "metrics", "loss"),
    "unknown aggregation 'median'": lambda b: {**b, "aggregation": "median"},
    "consent commitment: ": lambda b: _first(b, "consent", {"root": b"x"}),
    "erasures must be non-empty lists": lambda b: _first(b, "erasures", []),
    "'privacy' must be a map": lambda b: {**b, "privacy": "research"},
    "unknown field(s) config": lambda b: {**b, "config": {"run": "test"}},
}


@pytest.mark.parametrize("text", sorted(CODEC), ids=_slug)
def test_the_codec_refuses_each_malformed_field(text: str) -> None:
    record, _ = _valid()
    body = record.to_body()
    assert RoundRecord.from_body(body) == record
    with pytest.raises(RecordFormatError) as exc:
        RoundRecord.from_body(CODEC[text](body))
    assert f"malformed round record: {text}" in str(exc.value), str(exc.value)
