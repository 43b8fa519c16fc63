"""Regressions for two round-machine bugs the mutation run's tests found
(benchmarks/mutations.py), both in `RoundMachine._client_on`: a survivor set the node's client
refused was recorded as signed (binding the node to a set it never signed), and the leader's own
client's refusal escaped `tick()` (ending the node's deadline loop)."""

from __future__ import annotations

from dataclasses import replace

from consortium.protocol.messages import Message, SecAgg, Update
from tests.adversarial.test_secagg_dishonest import _attack, _secagg_type
from tests.machines import Wire


def test_a_member_is_not_bound_to_a_survivor_set_it_refused() -> None:
    """Attempt 0's leader shows the victim a set that leaves it out. The victim's client refuses
    to sign, yet `_client_on` has already put the set in `_signed_sets` (no PersistSurvivorSet
    is emitted, since the refusal discards it): from then on the victim reports itself bound to
    a set without itself. The others are bound to the five, so no later attempt's sum is one
    every bound member accepts, and the round never commits."""
    wire = Wire.build(5, secure=True, seed=9)
    wire.begin()
    attacker, victim = _attack(wire)

    def leave_out(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        if sender == attacker and to == victim and _secagg_type(msg) == "secagg/survivor-set":
            assert isinstance(msg, SecAgg)
            shown = [n for n in msg.body["survivors"] if n != victim]
            return [(to, replace(msg, body={**msg.body, "survivors": shown}))]
        return [(to, msg)]

    wire.filter = leave_out
    wire.run()
    assert "leaves out this node's masked input" in "\n".join(wire.notes.get(victim, []))
    wire.filter = None
    wire.tick(25.0)  # attempt 1
    bound = [
        a.message.bound
        for n, a in wire.trace
        if n == victim
        and isinstance(getattr(a, "message", None), Update)
        and a.message.attempt == 1
    ]
    assert bound == [()], bound  # today: the four-member set it refused to sign


def test_a_leader_whose_own_client_refuses_the_set_does_not_raise_from_tick() -> None:
    """Five members sign their set in attempt 0, whose leader withholds the unmasking. Attempt
    1's leader, bound to the five like everyone, restarts that sum; a colluder's masked input
    goes missing, and at the stage deadline the leader's aggregator proposes the four. The
    leader's own `_client_on` refuses ([rule one-sum-per-update]) inside `_secure_progress`,
    which `tick` calls unguarded: SecAggError escapes `RoundMachine.tick`. In a node it ends
    `Node._tick_loop` (no try there), so that member handles no deadline for the rest of the
    run. (Reached from `on_message` instead, the refusal is caught there but misattributed to
    the sender, and the survivor sets for the other members are discarded with it.)"""
    wire = Wire.build(5, secure=True, seed=21)
    wire.begin()
    attacker, _ = _attack(wire)
    # A colluder (not a leader of an attempt the members signed in) drops out in attempt 1.
    colluder = next(
        n for n in sorted(wire.machines) if n not in (attacker, wire.machines[attacker].leader(1))
    )

    def withhold_then_drop_out(sender: str, to: str, msg: Message) -> list[tuple[str, Message]]:
        kind = _secagg_type(msg)
        if sender == attacker and msg.attempt == 0 and kind == "secagg/unmask-request":
            return []
        if sender == colluder and msg.attempt == 1 and kind == "secagg/masked-input":
            return []
        return [(to, msg)]

    wire.filter = withhold_then_drop_out
    wire.run()
    wire.tick(25.0)  # attempt 1 starts over the five
    wire.tick(6.0)  # stage deadline: today this raises out of the leader's tick
    leader = wire.machines[attacker].leader(1)
    assert "rule one-sum-per-update" in "\n".join(wire.notes.get(leader, []))
