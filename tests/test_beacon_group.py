"""The beacon group (issue 15, item 4): a manifest may name the members who deal the beacon key
and make each round's beacon, so that neither the ceremony nor a round's partials grow with the
membership. Everyone else checks the group's partials and cannot make one."""

from __future__ import annotations

import dataclasses
import itertools
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
from consortium.protocol.messages import BeaconShare, ProtocolError
from consortium.protocol.record import RoundRecord
from consortium.protocol.round import Broadcast, Note, Send
from consortium.protocol.verifier import RecordRejected, record_beacon
from tests.machines import RUN, Wire, model

runner = CliRunner()


def _ids(n: int) -> list[NodeIdentity]:
    return [NodeIdentity.generate(f"g{i}", seed=f"group{i}".encode()) for i in range(n)]


def _grouped(n: int = 7, size: int = 4) -> tuple[list[NodeIdentity], Genesis, list[str]]:
    ids = _ids(n)
    group = sorted(i.node_id for i in ids[:size])
    g = Genesis.ceremony(
        "group", ids, [Purpose("research")], 1, random=th.seeded_bytes(b"g"), beacon_members=group
    )
    return ids, g, group


def test_a_named_group_deals_alone_and_its_threshold_makes_the_beacon() -> None:
    ids, g, group = _grouped()
    g.verify()
    assert sorted(g.dealings) == group  # only the group dealt
    key = g.group_key()
    assert key.members == group and key.threshold == 2  # one more than a third of 4
    assert g.threshold == 2
    # The group is part of the signed body, and survives both encodings.
    assert g.body()["beacon"]["members"] == group
    again = Genesis.from_body(g.body(), g.signatures)
    assert again.digest() == g.digest() and again.beacon_ids() == group
    assert Genesis.from_json(g.to_json()).digest() == g.digest()
    message = beacon_message(g.digest(), RUN, 1)
    shares = [g.secret_share(i) for i in ids if i.node_id in group]
    partials = [make_partial(s, message) for s in shares]
    values = {
        value_from_partials(key, message, list(pair)) for pair in itertools.pairwise(partials)
    }
    assert len(values) == 1  # any two of the group give the one value


def test_a_group_of_every_member_is_the_default_and_keeps_the_digest() -> None:
    ids = _ids(5)
    pubs = [i.public() for i in ids]
    plain = Genesis.create("group", pubs, [Purpose("research")], 1)
    every = Genesis.create(
        "group", pubs, [Purpose("research")], 1, beacon_members=[i.node_id for i in ids]
    )
    assert every.beacon_members == () and every.digest() == plain.digest()
    assert "members" not in every.body()["beacon"]


def test_a_group_that_is_not_a_set_of_at_least_four_members_is_refused() -> None:
    ids = _ids(7)
    pubs = [i.public() for i in ids]
    stranger = NodeIdentity.generate("x", seed=b"stranger").node_id
    cases = [
        ([ids[0].node_id, ids[1].node_id, ids[2].node_id, stranger], "which is not a member"),
        ([ids[0].node_id] * 2 + [ids[1].node_id, ids[2].node_id], "names a member twice"),
        ([i.node_id for i in ids[:3]], "a beacon group of 3 is too small"),
    ]
    for group, message in cases:
        with pytest.raises(GenesisError, match=message):
            Genesis.create("group", pubs, [Purpose("research")], 1, beacon_members=group)


def test_a_member_outside_the_group_can_neither_deal_nor_make_a_partial() -> None:
    ids, g, group = _grouped()
    outsider = next(i for i in ids if i.node_id not in group)
    fresh = Genesis.create(
        "group", [i.public() for i in ids], [Purpose("research")], 1, beacon_members=group
    )
    with pytest.raises(GenesisError, match="not in this manifest's beacon group"):
        fresh.deal(outsider)
    with pytest.raises(GenesisError, match="holds no share of the beacon key"):
        g.secret_share(outsider)
    # A partial the outsider makes with a key of its own is refused by every collector.
    message = beacon_message(g.digest(), RUN, 1)
    forged = make_partial(th.SecretShare(outsider.node_id, 12345), message)
    with pytest.raises(th.ThresholdError, match="not in the beacon group"):
        BeaconCollector(g.group_key(), message).add(forged)


def test_a_dealing_smuggled_in_from_outside_the_group_is_refused() -> None:
    ids, g, group = _grouped()
    outsider = next(i for i in ids if i.node_id not in group)
    boxes = {m.node_id: m.box_key for m in g.members if m.node_id in group}
    d = th.deal(outsider.node_id, boxes, g.threshold, th.seeded_bytes(b"o"))
    signature = outsider.sign(Domain.BEACON_DEALING, g.dealing_statement(d))
    g.dealings[outsider.node_id] = SignedDealing(d, signature)
    g.signatures.clear()  # a manifest carried around before anyone signed
    for signer in (ids[0], outsider):  # a group member and an outsider both refuse to sign
        with pytest.raises(GenesisError, match="which is not in the beacon group"):
            g.sign(signer)


def test_a_body_with_an_unsorted_group_is_not_canonical() -> None:
    _, g, group = _grouped()
    body = g.body()
    body["beacon"]["members"] = list(reversed(group))
    with pytest.raises(GenesisError, match="not in canonical form"):
        Genesis.from_body(body, g.signatures)


def test_rounds_commit_with_a_group_and_outsiders_send_no_partials() -> None:
    wire = Wire.build(7, beacon_group=4)
    group = set(wire.genesis.beacon_ids())
    wire.begin()
    wire.settle()
    entries = {wire.entry_bytes(n) for n in wire.machines}
    assert len(entries) == 1  # every member committed the same entry
    shares = [
        (nid, a)
        for nid, a in wire.trace
        if isinstance(a, Send | Broadcast) and isinstance(a.message, BeaconShare)
    ]
    assert {nid for nid, _ in shares} == group  # outsiders broadcast nothing
    record = RoundRecord.from_entry(Entry.from_bytes(wire.entry_bytes(next(iter(group)))))
    assert {p.member for p in record.beacon} <= group
    assert record_beacon(record, wire.genesis)  # verifies against the group's keys
    # A leader that swaps in a partial of an outsider (made with any key) is refused by name.
    outsider = next(n for n in wire.machines if n not in group)
    message = beacon_message(wire.genesis.digest(), RUN, 1)
    forged = make_partial(th.SecretShare(outsider, 99), message)
    tampered = dataclasses.replace(record, beacon=(forged, *record.beacon[1:]))
    with pytest.raises(RecordRejected, match="not in the beacon group") as exc:
        record_beacon(tampered, wire.genesis)
    assert exc.value.rule == "beacon-invalid"


def test_an_outsiders_partial_is_refused_by_name_and_its_bare_ask_is_answered() -> None:
    wire = Wire.build(7, beacon_group=4)
    group = wire.genesis.beacon_ids()
    outsider = next(n for n in wire.machines if n not in group)
    member = wire.machines[group[0]]
    wire.begin()
    message = beacon_message(wire.genesis.digest(), RUN, 1)
    forged = make_partial(th.SecretShare(outsider, 777), message)
    share = BeaconShare(RUN, 1, forged.sigma, forged.proof)
    late = Wire.build(7, beacon_group=4)
    late.machines[group[0]].begin(1, late.frontier, 0.0, model=model([0] * 8))
    notes = late.machines[group[0]].on_message(outsider, share, 0.0)
    assert any(
        isinstance(n, Note)
        and "invalid beacon partial" in n.text
        and "not in the beacon group" in n.text
        for n in notes
    ), notes
    assert late.machines[group[0]].beacon is None and not late.machines[group[0]].s.beacon.has(
        outsider
    )
    # A bare ask (no partial) from an outsider is answered with the member's own partial.
    ask = BeaconShare(RUN, 1, b"", b"", True)
    actions = member.on_message(outsider, ask, wire.now)
    answers = [a for a in actions if isinstance(a, Send) and a.to == outsider]
    assert answers and isinstance(answers[0].message, BeaconShare)
    assert len(answers[0].message.sigma) == 33
    BeaconPartial(group[0], answers[0].message.sigma, answers[0].message.proof)


def test_an_empty_share_that_does_not_ask_is_malformed() -> None:
    body = BeaconShare(RUN, 1, b"", b"", True).to_body()
    assert BeaconShare.from_body(body).ask
    body["ask"] = False
    with pytest.raises(ProtocolError, match="33-byte point and a 64-byte proof"):
        BeaconShare.from_body(body)


def test_the_group_from_the_command_line(tmp_path: Path) -> None:
    names = ("a", "b", "c", "d", "e")
    for name in names:
        res = runner.invoke(app, ["node", "init", "--name", name, "--dir", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    manifest = tmp_path / "genesis.json"
    members = [x for n in names for x in ("--member", str(tmp_path / n / "node.pub"))]
    create = ["genesis", "create", *members, "--purpose", "research", "--out", str(manifest)]
    res = runner.invoke(app, [*create, "--beacon-member", "zed"])
    assert res.exit_code == 2 and "'zed' is not one of the --member names" in res.output
    group = [x for n in names[:4] for x in ("--beacon-member", n)]
    res = runner.invoke(app, [*create, *group])
    assert res.exit_code == 0, res.output
    assert "each of the 4 members of the beacon group" in res.output
    deal = ["genesis", "deal", "--genesis", str(manifest), "--dir"]
    res = runner.invoke(app, [*deal, str(tmp_path / "e")])
    assert res.exit_code != 0 and "not in this manifest's beacon group" in res.output
    assert "Traceback" not in res.output
    for name in names[:4]:
        res = runner.invoke(app, [*deal, str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    assert "beacon group has dealt" in " ".join(res.output.split())
    for name in names:
        sign = ["genesis", "sign", "--dir", str(tmp_path / name), "--genesis", str(manifest)]
        res = runner.invoke(app, sign)
        assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["genesis", "verify", str(manifest)])
    assert res.exit_code == 0 and "genesis OK" in res.output
    said = " ".join(res.output.split())
    assert "beacon group: 4 of 5 members (" in said and "2 partials make a beacon" in said
    assert len(Genesis.load(manifest).beacon_ids()) == 4


def test_an_outsider_asks_only_the_group_and_a_member_makes_its_partial_once() -> None:
    wire = Wire.build(7, beacon_group=4)
    group = wire.genesis.beacon_ids()
    outsider = next(n for n in wire.machines if n not in group)
    m = wire.machines[outsider]
    begun = m.begin(1, wire.frontier, 0.0, model=model([0] * 8))
    assert not [a for a in begun if isinstance(a, Send | Broadcast)]  # no partial to send
    asks = [a for a in m.tick(10.0) if isinstance(a, Send | Broadcast)]
    assert asks and all(isinstance(a, Send) and a.to in group for a in asks)
    assert {a.to for a in asks if isinstance(a, Send)} == set(group)
    assert all(isinstance(a.message, BeaconShare) and not a.message.sigma for a in asks)
    member = wire.machines[group[0]]
    member.begin(1, wire.frontier, 0.0, model=model([0] * 8))
    first = member._my_partial()
    assert first is not None and member._my_partial() is first  # made once per message
