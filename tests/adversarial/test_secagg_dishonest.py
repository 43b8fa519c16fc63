"""SecAgg+ against a dishonest leader (issue 11): scripted attacks, each refused by name.

Five members (f = 1, quorum 4, floor 4): round machines wired with no network (tests/machines.py);
the attacker is whoever leads attempt 0, rewriting what it relays. For each attack: honest
members refuse it with one note naming the rule or the offender, nothing is committed in the
attacked attempt, and the victim's update enters no sum the attacker can unmask apart from the
legitimate one (criterion: every aggregate released in the round is over one and the same set,
bit for bit, or the victim's masked input is unmasked in none).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from consortium.core.encoding import Domain, decode
from consortium.ledger.entries import Entry
from consortium.protocol.messages import Message, Propose, SecAgg, Update
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import Broadcast, PersistSurvivorSet, Send
from consortium.protocol.secagg import Transcript, verify_aggregate
from consortium.protocol.secagg.auth import key_statement, survivors_statement
from consortium.protocol.secure_round import START, member_verifier, params_from_body
from tests.machines import Wire, all_notes


def _attack(wire: Wire) -> tuple[str, str]:
    """(attacker: attempt 0's leader, victim: another member)."""
    m = next(iter(wire.machines.values()))
    attacker = m.leader(0)
    victim = next(n for n in sorted(wire.machines) if n not in (attacker, m.leader(1)))
    return attacker, victim


def _secagg_type(msg: Message) -> str:
    return str(msg.body.get("type", "start")) if isinstance(msg, SecAgg) else ""


def _committed_attempts(wire: Wire) -> set[int]:
    return {
        RoundRecord.from_entry(Entry.from_bytes(c.proposal.entry)).attempt
        for cs in wire.committed.values()
        for c in cs
    }


def _unmask_responses(wire: Wire, attempt: int) -> list[str]:
    return [
        n
        for n, a in wire.trace
        if isinstance(a, Send)
        and isinstance(a.message, SecAgg)
        and a.message.attempt == attempt
        and a.message.body.get("type") == "secagg/unmask-response"
    ]


def test_key_substitution_by_the_leader_is_refused_and_names_it() -> None:
    wire = Wire.build(5, secure=True, seed=7)
    wire.begin()
    attacker, victim = _attack(wire)
    ident = next(i for i in wire.ids if i.node_id == attacker)
    fake = X25519PrivateKey.generate().public_key().public_bytes_raw()
    other = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def substitute(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == attacker and to == victim and _secagg_type(msg) == "secagg/neighbour-keys":
            assert isinstance(msg, SecAgg)
            keys = dict(msg.body["keys"])
            node = next(k for k in sorted(keys) if k != attacker)
            statement = key_statement(msg.body["round"], node, fake, other)
            sig = ident.sign(Domain.MESSAGE, statement, wire.genesis.digest())
            keys[node] = [fake, other, sig]  # its own keys, under its own signature
            return [(to, replace(msg, body={**msg.body, "keys": keys}))]
        return [(to, msg)]

    wire.filter = substitute
    wire.settle(step=5.0)
    notes = "\n".join(wire.notes.get(victim, []))
    assert "relayed keys for" in notes and "did not sign" in notes
    # The victim stopped before encrypting a share to a key it could not attribute; the round
    # went on without it (four members are the floor at n = 5).
    shares = [
        n
        for n, a in wire.trace
        if isinstance(a, Send) and _secagg_type(a.message) == "secagg/encrypted-shares"
    ]
    assert victim not in shares
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(victim)))
    assert victim not in record.participants and len(record.participants) == 4


def test_a_start_below_the_floor_or_with_strangers_is_refused() -> None:
    for parts in ("shrunk", "fake"):
        wire = Wire.build(5, secure=True, seed=8)
        wire.begin()
        attacker, victim = _attack(wire)

        def shrink(
            sender: str,
            to: str,
            msg: Message,
            parts: str = parts,
            attacker: str = attacker,
            victim: str = victim,
        ) -> Any:
            if sender == attacker and _secagg_type(msg) == "start":
                assert isinstance(msg, SecAgg)
                start = dict(msg.body[START])
                names = [attacker, victim] if parts == "shrunk" else [*start["participants"]]
                if parts == "fake":
                    names = sorted([*names[:3], "fake-a"])
                start["participants"] = sorted(names)
                start["samples"] = {n: 10 for n in names}
                return [(to, replace(msg, body={START: start}))]
            return [(to, msg)]

        wire.filter = shrink
        wire.run()
        assert "rule participant-floor" in "\n".join(wire.notes.get(victim, [])), parts
        assert not _unmask_responses(wire, 0)


def test_two_survivor_sets_never_both_certified_and_nothing_is_revealed() -> None:
    wire = Wire.build(5, secure=True, seed=9)
    wire.begin()
    attacker, victim = _attack(wire)
    shown: dict[str, tuple[str, ...]] = {}

    def split(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == attacker and _secagg_type(msg) == "secagg/survivor-set":
            assert isinstance(msg, SecAgg)
            full = tuple(msg.body["survivors"])
            others = sorted(n for n in full if n not in (attacker, victim))
            # Two members see the real set; the victim and one other one without the victim.
            survivors = full if to in others[:2] else tuple(n for n in full if n != victim)
            shown[to] = survivors
            return [(to, replace(msg, body={**msg.body, "survivors": list(survivors)}))]
        return [(to, msg)]

    wire.filter = split
    wire.run()
    assert len(set(shown.values())) == 2
    assert "leaves out this node's masked input" in "\n".join(wire.notes.get(victim, []))
    wire.tick(6.0)  # past the stage deadline
    assert not _unmask_responses(wire, 0)  # no set reached quorum: nobody revealed anything
    assert "participants signed the survivor set, quorum is 4" in all_notes(wire)


def test_a_forged_certificate_is_refused() -> None:
    """The leader mixes signatures of two sets into one certificate: only those over the set a
    member signed count, and they are fewer than the quorum."""
    wire = Wire.build(5, secure=True, seed=10)
    wire.begin()
    attacker, victim = _attack(wire)

    def forge(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == attacker and _secagg_type(msg) == "secagg/unmask-request":
            assert isinstance(msg, SecAgg)
            cert = dict(msg.body["certificate"])
            for node in sorted(cert)[:2]:  # two signatures replaced by ones over another set
                ident = next(i for i in wire.ids if i.node_id == node)
                other = survivors_statement(msg.body["round"], [node])
                cert[node] = ident.sign(Domain.MESSAGE, other, wire.genesis.digest())
            return [(to, replace(msg, body={**msg.body, "certificate": cert}))]
        return [(to, msg)]

    wire.filter = forge
    wire.run()
    assert "certified by 3 participants, quorum is 4" in "\n".join(wire.notes.get(victim, []))
    assert victim not in _unmask_responses(wire, 0)


def _released(wire: Wire) -> list[tuple[Transcript, bytes]]:
    """Every transcript a leader proposed (what an attacker leading would hold), with the
    unmasked sum it proves (checked as every voter checks it)."""
    out = []
    for _, a in wire.trace:
        if isinstance(a, Send | Broadcast) and isinstance(a.message, Propose):
            proposal = a.message.proposal
            tr = Transcript.from_body(decode(proposal.transcript))
            record = RoundRecord.from_entry(Entry.from_bytes(proposal.entry))
            assert record.secagg is not None
            params = params_from_body(dict(record.secagg.params))
            words = verify_aggregate(params, tr, member_verifier(wire.genesis))
            out.append((tr, words.tobytes()))
    return out


def test_differencing_two_attempts_of_a_round_gains_nothing() -> None:
    """Attempt 0's leader gets a sum certified without the victim, withholds it, and the next
    attempt is asked for a sum with the victim. Members bound to the first set refuse any other:
    the only sum released in the round is the first one, recomputed bit for bit."""
    wire = Wire.build(5, secure=True, seed=11)
    wire.begin()
    attacker, victim = _attack(wire)

    def leave_out_and_withhold(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if (
            sender == attacker
            and isinstance(msg, SecAgg)
            and msg.attempt == 0
            and msg.body.get("type") == "secagg/share-delivery"
            and to == victim
        ):
            return []  # the victim never gets its shares: its input is left out
        if sender == attacker and isinstance(msg, Propose) and msg.attempt == 0:
            return []  # the unmasked sum is withheld
        return [(to, msg)]

    wire.filter = leave_out_and_withhold
    wire.run()
    wire.tick(6.0)  # past the stage deadline: the sum is agreed and unmasked without the victim
    first = wire.machines[attacker].s.leading
    assert first is not None and first.stage_name == "done"  # attempt 0 was unmasked
    assert victim not in first.agg.transcript().survivors

    # The next leader, colluding, asks for the sum with the victim.
    def with_victim(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if isinstance(msg, SecAgg) and msg.attempt == 1 and _secagg_type(msg) == "start":
            start = dict(msg.body[START])
            start["participants"] = sorted(wire.machines)
            start["samples"] = {n: 10 + sorted(wire.machines).index(n) for n in wire.machines}
            return [(to, replace(msg, body={START: start}))]
        return [(to, msg)]

    wire.filter = with_victim
    wire.tick(25.0)  # attempt 1
    assert "rule one-sum-per-update" in all_notes(wire)
    assert not _unmask_responses(wire, 1)
    wire.filter = None
    wire.settle(step=25.0)
    released = _released(wire)
    assert released and all(words == released[0][1] for _, words in released)
    assert all(victim not in t.survivors for t, _ in released)
    first_sum = first.agg.result.words.tobytes()
    assert released[0][1] == first_sum  # the same sum as the withheld one, bit for bit


def test_signatures_from_another_consortium_are_refused() -> None:
    """Same member keys, another genesis: a key advertisement signed there is refused here."""
    wire = Wire.build(5, secure=True, seed=12)
    wire.begin()
    twin = Wire.build(5, secure=True, seed=12)
    twin.genesis = replace(twin.genesis, consortium="twin")
    attacker, victim = _attack(wire)
    ident = next(i for i in wire.ids if i.node_id == victim)

    def replay(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == victim and _secagg_type(msg) == "secagg/advertise-keys":
            assert isinstance(msg, SecAgg)
            b = msg.body
            statement = key_statement(b["round"], victim, b["enc"], b["mask"])
            sig = ident.sign(Domain.MESSAGE, statement, twin.genesis.digest())
            return [(to, replace(msg, body={**b, "sig": sig}))]
        return [(to, msg)]

    wire.filter = replay
    wire.run()
    notes = "\n".join(wire.notes.get(attacker, []))
    assert "keys not signed by their sender" in notes


def test_a_survivor_set_is_persisted_before_its_signature_leaves() -> None:
    wire = Wire.build(5, secure=True, seed=13)
    wire.begin()
    wire.settle()
    for nid in wire.machines:
        mine = [a for n, a in wire.trace if n == nid]
        sends = [
            i
            for i, a in enumerate(mine)
            if isinstance(a, Send) and _secagg_type(a.message) == "secagg/survivor-vote"
        ]
        for i in sends:
            assert isinstance(mine[i - 1], PersistSurvivorSet)


def test_after_a_restart_between_signing_and_sending_no_other_sum_is_joined() -> None:
    """A member signed (and persisted) a survivor set in attempt 0, then crashed before sending
    it; attempt 0's leader is gone. Restarted, the member refuses a sum over the set it signed,
    since it can no longer reproduce its exact input, and a sum over any other set."""
    probe = Wire.build(5, secure=True, seed=14)
    probe.begin()
    lost, victim = _attack(probe)
    alive = tuple(sorted(n for n in probe.machines if n != lost))
    with_lost = tuple(sorted([*alive[:3], lost])) if victim in alive[:3] else None
    assert with_lost is not None

    same = Wire.build(5, secure=True, seed=14, signed_sets={victim: {(1, 0): alive}})
    same.begin()
    same.down.add(lost)  # attempt 0 fails
    same.run()
    same.tick(25.0)  # attempt 1: its leader starts a sum over the set the victim signed
    notes = "\n".join(same.notes.get(victim, []))
    assert "cannot reproduce its input" in notes and "rule one-sum-per-update" in notes

    other = Wire.build(5, secure=True, seed=14, signed_sets={victim: {(1, 0): with_lost}})
    other.begin()
    other.down.add(lost)

    def hide_binding(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if isinstance(msg, Update) and sender == victim:
            return [(to, replace(msg, bound=()))]  # so the leader starts over the four alive
        return [(to, msg)]

    other.filter = hide_binding
    other.run()
    other.tick(25.0)
    other.tick(6.0)  # past the collect deadline: four updates are enough
    notes = "\n".join(other.notes.get(victim, []))
    assert "differs from the survivor set this node signed" in notes


def test_a_lying_share_is_discarded_its_sender_named_and_the_round_goes_on() -> None:
    wire = Wire.build(5, secure=True, seed=16)
    wire.begin()
    leader, liar = _attack(wire)

    def lie(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == liar and _secagg_type(msg) == "secagg/unmask-response":
            assert isinstance(msg, SecAgg)
            seeds = {p: bytes(66) for p in msg.body["seeds"]}
            return [(to, replace(msg, body={**msg.body, "seeds": seeds}))]
        return [(to, msg)]

    wire.filter = lie
    wire.settle()
    notes = "\n".join(wire.notes.get(leader, []))
    assert wire.name(liar) in notes and "it was not dealt" in notes
    assert _committed_attempts(wire) == {0}  # no attempt lost


# -- the START a participant accepts, one refusal per check ----------------------------------------


def _start_to_victim(seed: int, rewrite: Any) -> tuple[Wire, str, str]:
    """A round whose attempt-0 leader sends the victim `rewrite(start)` (None: the same start
    twice) instead of the START everyone else gets."""
    wire = Wire.build(5, secure=True, seed=seed)
    wire.begin()
    attacker, victim = _attack(wire)

    def tamper(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == attacker and to == victim and _secagg_type(msg) == "start":
            assert isinstance(msg, SecAgg)
            if rewrite is None:
                return [(to, msg), (to, msg)]
            return [(to, replace(msg, body={START: rewrite(dict(msg.body[START]))}))]
        return [(to, msg)]

    wire.filter = tamper
    wire.run()
    return wire, attacker, victim


def _advertised(wire: Wire, node: str, attempt: int = 0) -> int:
    return sum(
        1
        for n, a in wire.trace
        if n == node
        and isinstance(a, Send)
        and isinstance(a.message, SecAgg)
        and a.message.attempt == attempt
        and _secagg_type(a.message) == "secagg/advertise-keys"
    )


def _counts(start: dict[str, Any], value: Any) -> dict[str, Any]:
    return {**start, "samples": dict.fromkeys(start["samples"], value)}


MALFORMED_STARTS = {
    "not-a-map": lambda start: ["participants", start["participants"]],
    "participants-not-a-list": lambda start: {**start, "participants": "everyone"},
    "count-not-a-positive-integer": lambda start: _counts(start, True),
    "more-participants-than-members": lambda start: {
        **start,
        "participants": [*start["participants"], *start["participants"][:1]],
    },
}


@pytest.mark.parametrize("case", sorted(MALFORMED_STARTS))
def test_a_malformed_start_is_refused(case: str) -> None:
    wire, attacker, victim = _start_to_victim(17, MALFORMED_STARTS[case])
    refusal = f"refused secagg from {wire.name(attacker)}: malformed secure-aggregation start"
    assert refusal in wire.notes.get(victim, []), wire.notes.get(victim)
    assert _advertised(wire, victim) == 0


def _without(start: dict[str, Any], node: str, key: str) -> dict[str, Any]:
    parts = [p for p in start["participants"] if p != node or key == "samples"]
    samples = {k: v for k, v in start["samples"].items() if k != node or key == "participants"}
    return {**start, "participants": parts, "samples": samples}


@pytest.mark.parametrize("key", ["participants", "samples"])
def test_a_start_that_leaves_the_recipient_out_is_refused(key: str) -> None:
    wire = Wire.build(5, secure=True, seed=18)
    wire.begin()
    _, victim = _attack(wire)
    wire, attacker, victim = _start_to_victim(18, lambda start: _without(start, victim, key))
    refusal = f"refused secagg from {wire.name(attacker)}: secure-aggregation start leaves this "
    refusal += "node out"
    assert refusal in wire.notes.get(victim, []), wire.notes.get(victim)
    assert _advertised(wire, victim) == 0


def test_a_second_start_in_one_attempt_is_refused_and_the_first_goes_on() -> None:
    wire, attacker, victim = _start_to_victim(19, None)
    refusal = (
        f"refused secagg from {wire.name(attacker)}: a second secure-aggregation start in one "
        "attempt"
    )
    assert refusal in wire.notes.get(victim, [])
    assert _advertised(wire, victim) == 1  # one client, one set of keys
    wire.filter = None
    wire.settle(step=5.0)
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(victim)))
    assert victim in record.participants and _committed_attempts(wire) == {0}


# -- one survivor set per attempt, one sum per update ---------------------------------------------


def _survivor_votes(wire: Wire, node: str, attempt: int) -> int:
    return sum(
        1
        for n, a in wire.trace
        if n == node
        and isinstance(a, Send)
        and isinstance(a.message, SecAgg)
        and a.message.attempt == attempt
        and _secagg_type(a.message) == "secagg/survivor-vote"
    )


def test_a_restarted_member_signs_no_second_set_in_the_attempt_it_signed_one() -> None:
    """The victim signed (and persisted) a four-member set in attempt 0, crashed and restarted
    in that attempt: asked to sign the five-member set of a fresh start, it refuses."""
    probe = Wire.build(5, secure=True, seed=20)
    probe.begin()
    attacker, victim = _attack(probe)
    four = tuple(sorted(n for n in probe.machines if n != attacker))
    wire = Wire.build(5, secure=True, seed=20, signed_sets={victim: {(1, 0): four}})
    wire.begin()
    wire.run()
    refusal = (
        "round 1: secure aggregation: it already signed another survivor set for this attempt "
        "[rule one-set-per-attempt]"
    )
    assert refusal in wire.notes.get(victim, []), wire.notes.get(victim)
    assert _survivor_votes(wire, victim, 0) == 0
    assert not any(n == victim and isinstance(a, PersistSurvivorSet) for n, a in wire.trace)


def test_a_member_bound_to_a_set_signs_no_smaller_one_in_a_later_attempt() -> None:
    """Six members (f = 1, quorum 4, floor 4). Attempt 0's leader leaves attempt 1's leader out
    (no shares), gets the other five's set signed and withholds the unmasking. In attempt 1
    the leader, bound to nothing, starts over that five; a colluder withholds its masked input,
    so the sum would be over four. Every member bound to the five refuses to sign the four: the
    five's sum minus the four's would be the colluder's update, and so any member's. (Leaving
    out attempt 0's leader alone would be allowed: the difference is that leader's own update.)"""
    wire = Wire.build(6, secure=True, seed=21)
    wire.begin()
    attacker, victim = _attack(wire)
    relay = wire.machines[victim].leader(1)  # attempt 1's leader
    colluder = next(n for n in sorted(wire.machines) if n not in (attacker, victim, relay))

    def leave_out_then_drop_out(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        kind = _secagg_type(msg)
        withheld = kind == "secagg/unmask-request" or (kind, to) == ("secagg/share-delivery", relay)
        if sender == attacker and msg.attempt == 0 and withheld:
            return []
        if sender == colluder and msg.attempt == 1 and kind == "secagg/masked-input":
            return []
        return [(to, msg)]

    wire.filter = leave_out_then_drop_out
    wire.run()
    wire.tick(6.0)  # past the stage deadline: the five sign their set; nothing is unmasked
    five = tuple(sorted(n for n in wire.machines if n != relay))
    assert wire.machines[victim]._signed_sets == {(1, 0): five}
    assert not _unmask_responses(wire, 0)
    wire.tick(25.0)  # attempt 1: its leader starts over the five the members are bound to
    wire.tick(6.0)  # past the stage deadline: it asks the four whose inputs came to sign
    refusal = (
        "round 1: secure aggregation: it signed another survivor set earlier in this round "
        "[rule one-sum-per-update]"
    )
    assert refusal in wire.notes.get(victim, []), wire.notes.get(victim)
    assert _survivor_votes(wire, victim, 1) == 0
    assert not _unmask_responses(wire, 1)


def test_a_leader_lost_after_the_set_was_signed_costs_one_attempt() -> None:
    """Attempt 0's leader crashes after its five members signed their survivor set. The bound
    members may drop that leader (the difference of the two sums is its own update, which it
    alone could learn), so attempt 1 completes over the other four."""
    wire = Wire.build(5, secure=True, seed=17)
    wire.begin()
    leader, _ = _attack(wire)

    def crash_before_unmask(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == leader and _secagg_type(msg) == "secagg/unmask-request":
            wire.down.add(leader)  # gone with the signed set, before anyone revealed
            return []
        return [(to, msg)]

    wire.filter = crash_before_unmask
    wire.run()
    assert leader in wire.down
    assert all(m._signed_sets for n, m in wire.machines.items() if n != leader)
    wire.settle(step=7.0)
    record = RoundRecord.from_entry(
        Entry.from_bytes(next(iter(wire.committed.values()))[-1].proposal.entry)
    )
    assert record.attempt >= 1 and leader not in record.participants
    assert len(record.participants) == 4
