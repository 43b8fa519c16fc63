"""The shared beacon (issue 12, item 3): the genesis DKG, threshold partials, and a leader order no
member can steer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from consortium.cli.app import app
from consortium.core import threshold as th
from consortium.core.encoding import Domain
from consortium.core.errors import GenesisError
from consortium.core.genesis import Genesis, Purpose, SignedDealing
from consortium.core.identity import NodeIdentity
from consortium.ledger.entries import Entry
from consortium.protocol.beacon import (
    BeaconCollector,
    BeaconPartial,
    beacon_message,
    make_partial,
    value_from_partials,
)
from consortium.protocol.messages import BeaconShare, Propose
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import Send
from consortium.protocol.schedule import leader_order
from consortium.protocol.verifier import RecordRejected, record_beacon
from tests.machines import RUN, Wire

runner = CliRunner()


def _ids(n: int, tag: str = "b") -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"{tag}{i}", seed=f"{tag}{i}".encode()) for i in range(n)]


def _ceremony(n: int) -> tuple[list[NodeIdentity], Genesis]:
    ids = _ids(n)
    g = Genesis.ceremony("beacon", ids, [Purpose("research")], 1, random=th.seeded_bytes(b"b"))
    return ids, g


# -- the DKG and the threshold partials -----------------------------------------------------------


def test_any_threshold_of_partials_gives_one_value_and_fewer_give_none() -> None:
    ids, g = _ceremony(7)
    group = g.group_key()
    assert group.threshold == 3  # f = 2 colluders among 7 cannot make it alone
    message = beacon_message(g.digest(), RUN, 4)
    partials = [make_partial(g.secret_share(i), message) for i in ids]
    values = {
        value_from_partials(group, message, subset)
        for subset in (partials[:3], partials[4:], [partials[6], partials[0], partials[3]])
    }
    assert len(values) == 1  # the leader cannot grind over which partials it includes
    short = BeaconCollector(group, message)
    for p in partials[:2]:
        short.add(p)
    assert short.value is None
    other = beacon_message(g.digest(), RUN, 5)
    others = [make_partial(g.secret_share(i), other) for i in ids[:3]]
    assert value_from_partials(group, other, others) not in values


def test_a_partial_for_another_message_or_member_is_refused() -> None:
    ids, g = _ceremony(4)
    group = g.group_key()
    message = beacon_message(g.digest(), RUN, 1)
    mine = make_partial(g.secret_share(ids[0]), message)
    collector = BeaconCollector(group, message)
    # Another round's partial, or the right point under another member's name, do not verify.
    stale = make_partial(g.secret_share(ids[0]), beacon_message(g.digest(), RUN, 2))
    with pytest.raises(th.ThresholdError, match="proof does not verify"):
        collector.add(stale)
    with pytest.raises(th.ThresholdError, match="proof does not verify"):
        collector.add(dataclasses.replace(mine, member=ids[1].node_id))
    # Exactly t distinct members' partials make a record's beacon.
    p1 = make_partial(g.secret_share(ids[1]), message)
    with pytest.raises(th.ThresholdError, match="appears twice"):
        value_from_partials(group, message, [mine, mine])
    assert value_from_partials(group, message, [mine, p1])


def test_genesis_signing_checks_every_share_and_names_a_bad_dealer() -> None:
    ids = _ids(4)
    g = Genesis.create("beacon", [i.public() for i in ids], [Purpose("research")], 1)
    g.deal(ids[0])
    with pytest.raises(GenesisError, match="beacon dealings missing from b1, b2, b3"):
        g.sign(ids[0])
    for i in ids[1:]:
        g.deal(i)
    # b2 deals b3 a share that decrypts but is not on its committed polynomial.
    sd = g.dealings[ids[2].node_id]
    good = th.open_share(sd.dealing, ids[3].node_id, g.member_ids(), ids[3].box_private_key())
    forged = _reencrypt(sd.dealing, ids[3], good + 1)
    signature = ids[2].sign(Domain.BEACON_DEALING, g.dealing_statement(forged))
    g.dealings[ids[2].node_id] = SignedDealing(forged, signature)
    g.sign(ids[0])  # b0's own shares are fine
    with pytest.raises(GenesisError, match=r"bad beacon dealing from b2: .* does not match"):
        g.sign(ids[3])


def _reencrypt(d: th.Dealing, recipient: NodeIdentity, value: int) -> th.Dealing:
    """`d` with the share for `recipient` replaced by an encryption of `value`."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    eph = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    eph_pub = eph.public_key().public_bytes_raw()
    box = recipient.box_private_key().public_key()
    key = th._share_key(eph.exchange(box), d.dealer, recipient.node_id, eph_pub)
    ct = ChaCha20Poly1305(key).encrypt(
        bytes(12), (value % th.ORDER).to_bytes(32, "big"), th._commitment_digest(d.commitments)
    )
    shares = tuple(
        th.EncryptedShare(s.recipient, eph_pub, ct) if s.recipient == recipient.node_id else s
        for s in d.shares
    )
    return dataclasses.replace(d, shares=shares)


def test_a_substituted_dealing_and_a_late_dealing_are_refused() -> None:
    ids = _ids(4)
    g = Genesis.create("beacon", [i.public() for i in ids], [Purpose("research")], 1)
    for i in ids:
        g.deal(i)
    # Mallory (b0), carrying the manifest, swaps b1's dealing for one she made (she would know
    # its secret); b2 refuses to sign it.
    boxes = {m.node_id: m.box_key for m in g.members}
    fake = th.deal(ids[1].node_id, boxes, 2, th.seeded_bytes(b"m"))
    data = g.to_json()
    for d in data["beacon"]["dealings"]:
        if d["dealer"] == ids[1].node_id:
            d["commitments"] = [c.hex() for c in fake.commitments]
    with pytest.raises(GenesisError, match="invalid beacon dealing signature from b1"):
        Genesis.from_json(data).sign(ids[2])
    with pytest.raises(GenesisError, match="would void their signatures"):
        g2 = Genesis.create("x", [i.public() for i in ids], [Purpose("p")], 1)
        for i in ids:
            g2.deal(i)
        g2.sign(ids[0])
        g2.dealings.pop(ids[3].node_id)
        g2.deal(ids[3])


def test_the_ceremony_from_the_command_line(tmp_path: Path) -> None:
    dirs = []
    for name in ("a", "b", "c", "d"):
        d = tmp_path / name
        res = runner.invoke(app, ["node", "init", "--name", name, "--dir", str(d)])
        assert res.exit_code == 0, res.output
        dirs.append(d)
    manifest = tmp_path / "genesis.json"
    members = [x for d in dirs for x in ("--member", str(d / "node.pub"))]
    res = runner.invoke(
        app, ["genesis", "create", *members, "--purpose", "research", "--out", str(manifest)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["genesis", "sign", "--dir", str(dirs[0]), "--genesis", str(manifest)])
    assert res.exit_code != 0 and "beacon dealings missing from a, b, c, d" in res.output
    for d in dirs:
        res = runner.invoke(app, ["genesis", "deal", "--dir", str(d), "--genesis", str(manifest)])
        assert res.exit_code == 0, res.output
    assert "every member has dealt" in " ".join(res.output.split())
    res = runner.invoke(app, ["genesis", "deal", "--dir", str(dirs[0]), "--genesis", str(manifest)])
    assert res.exit_code != 0 and "already dealt" in res.output
    for d in dirs:
        res = runner.invoke(app, ["genesis", "sign", "--dir", str(d), "--genesis", str(manifest)])
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["genesis", "verify", str(manifest)])
    assert res.exit_code == 0 and "genesis OK" in res.output
    g = Genesis.load(manifest)
    assert len(g.dealings) == 4 and g.threshold == 2
    assert "ciphertext" in json.dumps(json.loads(manifest.read_text())["beacon"])


# -- the schedule: nothing one member controls moves it ------------------------------------------


def _round_one(now: float, drop_partials_of: str | None = None) -> Wire:
    wire = Wire.build(7)
    wire.now = now
    if drop_partials_of is not None:
        blocked = wire.by_name(drop_partials_of)
        wire.filter = lambda s, t, m: (
            [] if s == blocked and isinstance(m, BeaconShare) else [(t, m)]
        )
    wire.begin()
    wire.filter = None
    wire.settle()
    return wire


def test_timestamps_and_collected_partials_leave_the_beacon_and_leader_order_unchanged() -> None:
    a = _round_one(now=0.0)
    b = _round_one(now=37.5, drop_partials_of="m0")  # another time, other partials collected
    ea, eb = (Entry.from_bytes(w.entry_bytes(next(iter(w.machines)))) for w in (a, b))
    assert ea.time != eb.time and ea.data != eb.data  # the leaders wrote different entries
    ra, rb = RoundRecord.from_entry(ea), RoundRecord.from_entry(eb)
    assert {p.member for p in ra.beacon} != {p.member for p in rb.beacon}
    assert record_beacon(ra, a.genesis) == record_beacon(rb, b.genesis)
    # Round 2 starts from different ledgers, yet its beacon and leader order are the same.
    orders = []
    for w in (a, b):
        f = w.frontier.append(w.entry_bytes(next(iter(w.machines))))
        for nid, m in w.machines.items():
            w._do(nid, m.begin(2, f, w.now, model=w.committed[nid][-1].proposal.model))
        w.deliver(BeaconShare)
        m = next(iter(w.machines.values()))
        assert m.beacon is not None
        orders.append((m.beacon, [m.leader(k) for k in range(7)]))
    assert orders[0] == orders[1]
    assert leader_order(orders[0][0], 2, sorted(a.machines)) == orders[0][1]


def test_a_record_whose_beacon_partials_do_not_verify_is_refused_by_name() -> None:
    wire = Wire.build(4)
    wire.begin()
    wire.settle()
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(next(iter(wire.machines)))))
    assert record_beacon(record, wire.genesis)
    bad = record.beacon[0]
    forged = BeaconPartial(bad.member, record.beacon[1].sigma, bad.proof)
    tampered = dataclasses.replace(record, beacon=(forged, *record.beacon[1:]))
    with pytest.raises(RecordRejected, match=r"beacon partial of .*proof does not verify") as exc:
        record_beacon(tampered, wire.genesis)
    assert exc.value.rule == "beacon-invalid"
    short = dataclasses.replace(record, beacon=record.beacon[:1])
    with pytest.raises(RecordRejected, match="1 beacon partials, expected 2"):
        record_beacon(short, wire.genesis)


def test_partials_a_voter_verified_are_skipped_only_for_the_same_bytes_and_message() -> None:
    """A voter hands the verifier the partials its own collector verified; a record's partial is
    spared the check only when it is exactly one of them, on the record's own message."""
    wire = Wire.build(4)
    wire.begin()
    wire.settle()
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(next(iter(wire.machines)))))
    message = beacon_message(wire.genesis.digest(), record.run, record.round)
    known = frozenset(record.beacon)
    assert record_beacon(record, wire.genesis, (message, known)) == record_beacon(
        record, wire.genesis
    )
    bad = record.beacon[0]
    forged = BeaconPartial(bad.member, record.beacon[1].sigma, bad.proof)
    tampered = dataclasses.replace(record, beacon=(forged, *record.beacon[1:]))
    with pytest.raises(RecordRejected, match="proof does not verify"):
        record_beacon(tampered, wire.genesis, (message, known))  # not the bytes verified
    other = beacon_message(wire.genesis.digest(), record.run, record.round + 1)
    with pytest.raises(RecordRejected, match="proof does not verify"):
        record_beacon(tampered, wire.genesis, (other, known | {forged}))  # another message's


def test_a_late_member_asks_for_partials_and_a_proposal_can_make_the_beacon() -> None:
    wire = Wire.build(4)
    late = wire.by_name("m3")
    wire.down.add(late)  # m3 is down while the others begin and exchange partials
    wire.begin()
    wire.down.discard(late)
    m = wire.machines[late]
    f = wire.frontier
    wire._do(late, m.begin(1, f, wire.now, model=bytes(32), ask=True))
    assert m.beacon is None
    wire.deliver(BeaconShare)  # its ask is answered once by each member
    assert m.beacon == next(iter(wire.machines.values())).beacon
    # Without asking: a member that never got a partial learns the beacon from a proposal.
    other = Wire.build(4)
    silent = other.by_name("m2")
    other.filter = lambda s, t, msg: (
        [] if t == silent and isinstance(msg, BeaconShare) else [(t, msg)]
    )
    other.begin()
    got = other.machines[silent]
    assert got.beacon is None
    other.settle()  # the leader proposes after the collect deadline, without m2's update
    assert got.beacon == next(iter(other.machines.values())).beacon
    assert other.committed[silent], "m2 cosigned or appended the round once it knew the leader"
    assert any(isinstance(a, Send) and isinstance(a.message, Propose) for _, a in other.trace)


def test_a_restarted_leader_gets_the_updates_again_and_the_attempt_goes_on() -> None:
    from consortium.protocol.randomness import Randomness
    from consortium.protocol.round import RoundMachine
    from tests.machines import VectorOps, cid_of, fedavg

    wire = Wire.build(4)
    wire.begin()
    leader = next(iter(wire.machines.values())).leader(0)
    wire.down.add(leader)
    wire.run()  # the updates reach a crashed leader: lost
    wire.down.discard(leader)
    old = wire.machines[leader]
    ident = next(i for i in wire.ids if i.node_id == leader)
    fresh = RoundMachine(
        ident,
        wire.genesis,
        old.settings,
        fedavg,
        cid_of,
        VectorOps(),
        randomness=Randomness.seeded(9),
    )
    wire.machines[leader] = fresh  # restarted with nothing in memory; it asks as it begins
    wire._do(leader, fresh.begin(1, wire.frontier, wire.now, model=old.s.model, ask=True))
    wire.run()
    (entry,) = {wire.entry_bytes(n) for n in wire.machines}
    record = RoundRecord.from_entry(Entry.from_bytes(entry))
    assert record.attempt == 0 and record.leader == leader  # no attempt lost to the restart
    assert len(record.participants) == 4  # every member's update, sent again on its ask
