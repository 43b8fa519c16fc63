"""SecAgg+ under hostile input: bad messages are refused by name, the round goes on or aborts."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from consortium.core.errors import ConsortiumError
from consortium.protocol.secagg import (
    ClientStage,
    MaskedInput,
    RejectedMessage,
    SecAggAbort,
    SecAggAggregator,
    SecAggClient,
    SecAggError,
    SecAggParams,
    SecAggStateError,
    SurvivorSet,
    UnmaskRequest,
    parse_message,
)
from consortium.protocol.secagg.auth import SimulatedKeys, survivors_statement

N, D = 10, 32


@pytest.fixture
def params() -> SecAggParams:
    return SecAggParams.create(
        b"hostile", [f"n{i}" for i in range(N)], D, k=9, threshold=6, quorum=5, min_survivors=5
    )


class Round:
    """Steps a round by hand so a test can tamper between stages."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.auth = SimulatedKeys.for_participants(params.participants)
        self.clients = {
            p: SecAggClient(
                params,
                p,
                signer=self.auth.signer(p),
                verify=self.auth.verify,
                rng=np.random.default_rng(i),
            )
            for i, p in enumerate(params.participants)
        }
        self.agg = SecAggAggregator(params, self.auth.verify)
        self.words = {p: np.full(D, i + 1, dtype=np.uint32) for i, p in enumerate(self.clients)}

    def to_inputs(self) -> None:
        for c in self.clients.values():
            self.agg.receive_keys(c.advertise_keys())
        for m in self.agg.finish_keys():
            self.agg.receive_shares(self.clients[m.recipient].receive_neighbour_keys(m))
        for dlv in self.agg.finish_shares():
            self.clients[dlv.recipient].receive_shares(dlv)

    def agree(self) -> list[UnmaskRequest]:
        for s in self.agg.finish_inputs():
            self.agg.receive_survivor_vote(self.clients[s.recipient].receive_survivor_set(s))
        return self.agg.finish_agreement()

    def finish(self, skip: frozenset[str] = frozenset()) -> np.ndarray:
        for r in self.agree():
            self.agg.receive_unmask(self.clients[r.recipient].receive_unmask_request(r))
        return self.agg.finish().words


def test_bad_masked_inputs_are_refused_and_sender_dropped(params: SecAggParams) -> None:
    r = Round(params)
    r.to_inputs()
    p = params.participants
    cases = {
        p[0]: MaskedInput(params.round_id, p[0], bytes(4 * D - 4)),  # wrong length
        p[1]: MaskedInput(params.round_id, p[1], bytes(4 * D + 1)),  # oversized
        p[2]: MaskedInput(b"other-round", p[2], bytes(4 * D)),  # another round
    }
    for sender, msg in cases.items():
        with pytest.raises(RejectedMessage, match=sender) as info:
            r.agg.receive_masked_input(msg)
        assert info.value.sender == sender
    with pytest.raises(RejectedMessage, match="intruder"):
        r.agg.receive_masked_input(MaskedInput(params.round_id, "intruder", bytes(4 * D)))
    good = set(p) - set(cases)
    for node in sorted(good):
        r.agg.receive_masked_input(r.clients[node].masked_input(r.words[node]))
    # A second input from an honest node is refused too, and drops it.
    with pytest.raises(RejectedMessage, match="second"):
        r.agg.receive_masked_input(MaskedInput(params.round_id, p[3], bytes(4 * D)))
    good.discard(p[3])
    assert set(cases) | {p[3]} <= r.agg.dropped
    total = r.finish()
    expected = sum(int(r.words[n][0]) for n in good)
    assert np.array_equal(total, np.full(D, expected, dtype=np.uint32))
    assert {e.sender for e in r.agg.rejections} >= set(cases) | {"intruder", p[3]}


def test_inputs_that_break_their_signed_commitment_are_refused_by_name(
    params: SecAggParams,
) -> None:
    """A member whose masked input is not what it committed to (which would make every voter
    refuse the published sum) is dropped at the leader's batch check; one whose commitment
    carries no valid signature is refused on receipt. The sum of the others is exact."""
    r = Round(params)
    r.to_inputs()
    p = params.participants
    liar, unsigned = p[0], p[1]
    for node in p:
        msg = r.clients[node].masked_input(r.words[node])
        if node == liar:  # its commitment and signature, another vector
            tampered = bytearray(msg.vector)
            tampered[0] ^= 1
            msg = replace(msg, vector=bytes(tampered))
        if node == unsigned:
            msg = replace(msg, signature=bytes(64))
            with pytest.raises(RejectedMessage, match="commitment not signed by its sender"):
                r.agg.receive_masked_input(msg)
            continue
        r.agg.receive_masked_input(msg)
    total = r.finish()
    reasons = {e.sender: e.reason for e in r.agg.rejections}
    assert "does not match its signed commitment" in reasons[liar]
    assert {liar, unsigned} <= r.agg.dropped
    expected = sum(int(r.words[n][0]) for n in p if n not in (liar, unsigned))
    assert np.array_equal(total, np.full(D, expected, dtype=np.uint32))
    # What it publishes verifies: the liar's commitment is not in it.
    from consortium.protocol.secagg import verify_aggregate

    assert liar not in r.agg.transcript().commitments
    assert np.array_equal(verify_aggregate(params, r.agg.transcript(), r.auth.verify), total)


def test_wrong_dtype_is_refused_at_parse_and_at_client(params: SecAggParams) -> None:
    body = MaskedInput(params.round_id, "n1", bytes(4 * D)).to_body()
    with pytest.raises(RejectedMessage, match="n1"):
        parse_message(body | {"vector": list(range(D))})
    with pytest.raises(RejectedMessage, match="unknown message type"):
        parse_message(body | {"type": "secagg/bogus"})
    r = Round(params)
    r.to_inputs()
    with pytest.raises(SecAggError, match="uint32"):
        r.clients["n1"].masked_input(np.zeros(D, dtype=np.float64))  # type: ignore[arg-type]


def test_tampered_share_fails_aead_naming_sender(params: SecAggParams) -> None:
    r = Round(params)
    for c in r.clients.values():
        r.agg.receive_keys(c.advertise_keys())
    for m in r.agg.finish_keys():
        r.agg.receive_shares(r.clients[m.recipient].receive_neighbour_keys(m))
    deliveries = r.agg.finish_shares()
    dlv = deliveries[0]
    sender, ct = dlv.ciphertexts[0]
    bad = replace(dlv, ciphertexts=((sender, ct[:-1] + bytes([ct[-1] ^ 1])), *dlv.ciphertexts[1:]))
    with pytest.raises(RejectedMessage, match="authentication") as info:
        r.clients[dlv.recipient].receive_shares(bad)
    assert info.value.sender == sender
    # A share relayed to the wrong recipient fails too: the AEAD binds sender and recipient.
    other = deliveries[1]
    moved = replace(other, ciphertexts=((sender, ct), *other.ciphertexts[1:]))
    if sender in dict(other.ciphertexts):
        with pytest.raises(RejectedMessage, match=sender):
            r.clients[other.recipient].receive_shares(moved)


def test_client_refuses_double_reveal(params: SecAggParams) -> None:
    r = Round(params)
    r.to_inputs()
    for node, c in r.clients.items():
        r.agg.receive_masked_input(c.masked_input(r.words[node]))
    requests = {q.recipient: q for q in r.agree()}
    for q in requests.values():  # the aggregator never asks for both secrets of a peer
        assert not set(q.survivors) & set(q.dropped)
    me = params.participants[0]
    peer = sorted(params.neighbours(me))[0]
    # Both secrets of a survivor, under the genuine certificate: the request does not follow
    # the certified set, so nothing is revealed.
    evil = replace(requests[me], dropped=(peer,))
    with pytest.raises(RejectedMessage, match="does not follow the agreed set"):
        r.clients[me].receive_unmask_request(evil)
    assert r.clients[me].stage is ClientStage.UNMASK  # nothing was revealed
    resp = r.clients[me].receive_unmask_request(requests[me])
    assert {p for p, _ in resp.seed_shares} == set(requests[me].survivors)
    with pytest.raises(SecAggStateError):
        r.clients[me].receive_unmask_request(requests[me])


def test_rejections_beyond_threshold_abort(params: SecAggParams) -> None:
    r = Round(params)
    r.to_inputs()
    with pytest.raises(SecAggError):
        for node in params.participants:
            r.agg.receive_masked_input(MaskedInput(params.round_id, node, b"x"))
    with pytest.raises(SecAggAbort):
        r.agg.finish_inputs()


def test_out_of_order_calls_are_state_errors(params: SecAggParams) -> None:
    auth = SimulatedKeys.for_participants(params.participants)
    c = SecAggClient(params, "n0", signer=auth.signer("n0"), verify=auth.verify)
    with pytest.raises(SecAggStateError):
        c.masked_input(np.zeros(D, dtype=np.uint32))
    agg = SecAggAggregator(params, auth.verify)
    with pytest.raises(SecAggStateError):
        agg.finish_inputs()
    with pytest.raises(SecAggError, match="not a participant"):
        SecAggClient(params, "stranger", signer=auth.signer("n0"), verify=auth.verify)
    assert issubclass(SecAggError, ConsortiumError)


def test_message_for_another_round_at_client(params: SecAggParams) -> None:
    r = Round(params)
    for c in r.clients.values():
        r.agg.receive_keys(c.advertise_keys())
    m = r.agg.finish_keys()[0]
    with pytest.raises(RejectedMessage, match="another round"):
        r.clients[m.recipient].receive_neighbour_keys(replace(m, round_id=b"old"))


def test_bad_unmask_responses(params: SecAggParams) -> None:
    r = Round(params)
    r.to_inputs()
    for node, c in r.clients.items():
        r.agg.receive_masked_input(c.masked_input(r.words[node]))
    requests = r.agree()
    liar, shorty = requests[0].recipient, requests[1].recipient
    for q in requests:
        resp = r.clients[q.recipient].receive_unmask_request(q)
        if q.recipient == shorty:  # truncated share: refused by name, round goes on
            bad = replace(
                resp, seed_shares=((resp.seed_shares[0][0], b"\x01"), *resp.seed_shares[1:])
            )
            with pytest.raises(RejectedMessage, match=shorty):
                r.agg.receive_unmask(bad)
            continue
        if q.recipient == liar:  # well-formed but wrong share values: refused, named
            resp = replace(resp, seed_shares=tuple((p, bytes(66)) for p, _ in resp.seed_shares))
            with pytest.raises(RejectedMessage, match="it was not dealt") as info:
                r.agg.receive_unmask(resp)
            assert info.value.sender == liar
            continue
        r.agg.receive_unmask(resp)
    # The round goes on with the other holders' shares, and the sum is exact.
    total = r.agg.finish().words
    expected = sum(int(r.words[n][0]) for n in params.participants)
    assert np.array_equal(total, np.full(D, expected, dtype=np.uint32))
    assert shorty not in r.agg.dropped  # its masked input is still part of the sum
    assert {liar, shorty} <= {e.sender for e in r.agg.rejections}


def test_a_dealer_whose_shares_do_not_match_its_commitments_is_named(
    params: SecAggParams,
) -> None:
    """A dealer that commits to other shares than it deals would make an honest holder's
    reveal look like a lie: the holder refuses the delivery and names the dealer."""
    r = Round(params)
    for c in r.clients.values():
        r.agg.receive_keys(c.advertise_keys())
    for m in r.agg.finish_keys():
        out = r.clients[m.recipient].receive_neighbour_keys(m)
        if m.recipient == params.participants[0]:
            bogus = tuple((h, bytes(64)) for h, _ in out.share_commitments)
            out = replace(out, share_commitments=bogus)
        r.agg.receive_shares(out)
    dealer = params.participants[0]
    for dlv in r.agg.finish_shares():
        if dlv.recipient == dealer:
            continue
        with pytest.raises(RejectedMessage, match="do not match its share commitments") as info:
            r.clients[dlv.recipient].receive_shares(dlv)
        assert info.value.sender == dealer


# -- what a client signs and reveals on (issue 11): one refusal per check --------------------------


def _at_agreement(params: SecAggParams) -> tuple[Round, dict[str, SurvivorSet]]:
    """A round whose masked inputs are all in: the survivor set each client is asked to sign."""
    r = Round(params)
    r.to_inputs()
    for node, c in r.clients.items():
        r.agg.receive_masked_input(c.masked_input(r.words[node]))
    return r, {s.recipient: s for s in r.agg.finish_inputs()}


def _slug(text: str) -> str:
    """A test id without spaces: the refusal text, words joined by '-'."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


SETS = {
    # n0's complete graph: every participant holds a share of n0's secrets (k = 9 of 10).
    "survivor set names a non-participant": lambda full: (*full, "zz-stranger"),
    "survivor set of 4 is below the floor of 5": lambda full: full[:4],
    "only 5 of this node's share holders survive, threshold is 6": lambda full: full[:5],
}


@pytest.mark.parametrize("text", sorted(SETS), ids=_slug)
def test_a_client_signs_no_set_it_may_not_let_be_unmasked(params: SecAggParams, text: str) -> None:
    r, sets = _at_agreement(params)
    me = params.participants[0]
    shown = replace(sets[me], survivors=SETS[text](sets[me].survivors))
    with pytest.raises(RejectedMessage, match=text) as info:
        r.clients[me].receive_survivor_set(shown)
    assert info.value.sender == "aggregator"
    assert r.clients[me].signed_set is None and r.clients[me].stage is ClientStage.AGREE


def test_a_client_reveals_nothing_for_a_set_it_did_not_sign(params: SecAggParams) -> None:
    """Every client signed the full set; the aggregator presents n0 a request over the set
    without n9, under a genuine quorum of signatures over that smaller set (colluders may sign
    anything). Revealing would hand out n9's mask key while n9's input is in the signed sum."""
    r, sets = _at_agreement(params)
    p = params.participants
    me, left_out = p[0], p[-1]
    for node, s in sets.items():
        r.agg.receive_survivor_vote(r.clients[node].receive_survivor_set(s))
    assert r.clients[me].signed_set == p
    other = tuple(n for n in p if n != left_out)
    statement = survivors_statement(params.round_id, other)
    cert = tuple((n, r.auth.signer(n)(statement)) for n in other[1 : 1 + params.quorum])
    request = UnmaskRequest(params.round_id, me, other, (left_out,), other, cert)
    with pytest.raises(RejectedMessage, match="unmask request for a set this node did not sign"):
        r.clients[me].receive_unmask_request(request)
    assert r.clients[me].stage is ClientStage.UNMASK  # nothing was revealed


COMMITMENTS = {
    "holder-missing": lambda c: c[1:],
    "short": lambda c: ((c[0][0], c[0][1][:63]), *c[1:]),
    "stranger": lambda c: (*c, ("zz-stranger", bytes(64))),
}


@pytest.mark.parametrize("case", sorted(COMMITMENTS))
def test_malformed_share_commitments_drop_their_dealer(params: SecAggParams, case: str) -> None:
    r = Round(params)
    for c in r.clients.values():
        r.agg.receive_keys(c.advertise_keys())
    dealer = params.participants[0]
    for m in r.agg.finish_keys():
        out = r.clients[m.recipient].receive_neighbour_keys(m)
        if m.recipient != dealer:
            r.agg.receive_shares(out)
            continue
        bad = replace(out, share_commitments=COMMITMENTS[case](out.share_commitments))
        text = "share commitments are not 64 bytes for exactly its share holders"
        with pytest.raises(RejectedMessage, match=text) as info:
            r.agg.receive_shares(bad)
        assert info.value.sender == dealer
    # The round goes on without the dealer.
    for dlv in r.agg.finish_shares():
        r.clients[dlv.recipient].receive_shares(dlv)
    assert dealer in r.agg.dropped
    for node, c in r.clients.items():
        if node != dealer:
            r.agg.receive_masked_input(c.masked_input(r.words[node]))
    for s in r.agg.finish_inputs():
        r.agg.receive_survivor_vote(r.clients[s.recipient].receive_survivor_set(s))
    for q in r.agg.finish_agreement():
        r.agg.receive_unmask(r.clients[q.recipient].receive_unmask_request(q))
    expected = sum(int(r.words[n][0]) for n in params.participants if n != dealer)
    assert np.array_equal(r.agg.finish().words, np.full(D, expected, dtype=np.uint32))


def test_the_aggregator_asks_no_one_to_sign_a_set_below_the_floor() -> None:
    """Seven inputs keep every mask removable (t = 6) but are below the floor of 8."""
    params = SecAggParams.create(
        b"floor", [f"n{i}" for i in range(N)], D, k=9, threshold=6, quorum=5, min_survivors=8
    )
    r = Round(params)
    r.to_inputs()
    for node in params.participants[:7]:
        r.agg.receive_masked_input(r.clients[node].masked_input(r.words[node]))
    with pytest.raises(SecAggAbort, match="only 7 masked inputs, the floor is 8"):
        r.agg.finish_inputs()
