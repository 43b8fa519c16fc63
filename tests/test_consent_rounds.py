"""Consent enforced in real rounds: withdrawals take effect at the next round, receipts prove it,
erasures reach the ledger, and no subject pseudonym ever leaves a node."""

from __future__ import annotations

import asyncio
from pathlib import Path

from consortium.consent import check_receipt, receipt_from_registry, roots_from_records
from consortium.node.node import Node
from consortium.node.sim import synthetic_subject
from consortium.protocol.record import Erasure, run_records
from tests.inprocess_cluster import cluster, drive, run_config, start


async def _wait_rounds(node: Node, n: int) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while len(run_records(node.ledger)) < n:
        assert loop.time() < end, f"round {n} not committed"
        await asyncio.sleep(0.01)


def test_withdrawal_receipts_erasure_and_no_identifiers(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path, 3, seed=31)
        node0 = nodes[0]
        try:
            await start(nodes, run_config(4, 0, secure="secagg+"))
            await _wait_rounds(node0, 1)
            reg = node0.registry
            assert reg is not None and node0.learner is not None
            ids = [int(r) for r in node0.learner.record_ids[:10]]
            withdrawn = [synthetic_subject(0, r) for r in ids]
            clock.now += 1.0  # rounds starting from now see the withdrawal
            t_withdraw = clock.now
            for subject in withdrawn:
                reg.withdraw(subject, at=t_withdraw)
            await drive(nodes, net, clock)
            records = run_records(node0.ledger)
            me = node0.identity.node_id
            sel_at = {r.round: r.at for r in reg.rounds()}
            counts = [(r.slot, r.consent[me].count) for r in records]
            before = [c for slot, c in counts if sel_at[slot] < t_withdraw]
            after = [c for slot, c in counts if sel_at[slot] >= t_withdraw]
            assert before and after, counts
            assert all(c == before[0] - 10 for c in after), counts

            # A withdrawn subject's receipt: used before the withdrawal, never after.
            roots = roots_from_records([(r.slot, r.consent) for r in records], me)
            verdicts = check_receipt(receipt_from_registry(reg, withdrawn[0], me), roots)
            status = {v.round: v.status for v in verdicts}
            assert all(
                status[slot] == ("used" if sel_at[slot] < t_withdraw else "not-used")
                for slot, _ in counts
            ), status

            # No pseudonym is in any shared byte: ledgers and stores of every node.
            subjects = [
                synthetic_subject(i, int(r)).encode()
                for i, n in enumerate(nodes)
                for r in n.learner.record_ids  # type: ignore[union-attr]
            ]
            for n in nodes:
                blobs = [(n.dir / "ledger.sqlite").read_bytes()]
                blobs += [p.read_bytes() for p in (n.dir / "store").rglob("*") if p.is_file()]
                for blob in blobs:
                    assert not any(s in blob for s in subjects[:: max(1, len(subjects) // 200)])
                    assert b"subject-" not in blob
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_erasure_is_recorded_in_the_next_round(tmp_path: Path) -> None:
    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path, 3, seed=32)
        node0 = nodes[0]
        try:
            await start(nodes, run_config(3, 0))
            await _wait_rounds(node0, 1)
            reg = node0.registry
            assert reg is not None and node0.learner is not None
            rid = int(node0.learner.record_ids[0])
            clock.now += 1.0
            from consortium.consent import erase_subject

            er = erase_subject(reg, synthetic_subject(0, rid), at=clock.now)
            assert er.record_ids == [str(rid)]
            await drive(nodes, net, clock)
            records = run_records(node0.ledger)
            me = node0.identity.node_id
            noted = [r.erasures.get(me) for r in records if r.erasures.get(me)]
            assert noted == [(Erasure(records=1, at=int(clock.now * 1000)),)]
            assert str(rid) not in reg.eligible("research", clock.now + 10)
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())


def test_erasure_retrains_from_the_checkpoint_before_first_use(tmp_path: Path) -> None:
    """Erase a subject used since round 1, retrain from the model before it, measure the cost."""
    import time as _time

    from consortium.consent import ConsentError, erase_subject
    from consortium.consent.erasure import checkpoint_for
    from consortium.node.config import RunConfig

    async def go() -> None:
        nodes, net, clock = await cluster(tmp_path, 3, seed=33)
        node0 = nodes[0]
        try:
            await start(nodes, run_config(3, 0))
            await drive(nodes, net, clock)
            reg = node0.registry
            assert reg is not None and node0.learner is not None
            me = node0.identity.node_id
            subject = synthetic_subject(0, int(node0.learner.record_ids[0]))
            old = run_records(node0.ledger)
            clock.now += 1.0
            er = erase_subject(reg, subject, at=clock.now)
            checkpoint, redo = checkpoint_for(er, [r.ref() for r in old])
            assert checkpoint == old[0].prev_model and redo == 3  # used since round 1
            t0 = _time.perf_counter()
            retrain = run_config(redo, 0).model_copy(update={"initial_model": str(checkpoint)})
            assert isinstance(retrain, RunConfig)
            await start(nodes, retrain)
            await drive(nodes, net, clock)
            del t0
            new = run_records(node0.ledger)
            assert len(new) == redo and new[0].prev_model == checkpoint
            assert new[0].erasures[me][0].records == 1  # the erasure, on the ledger
            assert all(r.consent[me].count == old[0].consent[me].count - 1 for r in new)
            try:
                receipt_from_registry(reg, subject, me)
                raise AssertionError("a receipt for an erased subject must be refused")
            except ConsentError:
                pass
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())
