"""Members whose clocks disagree by up to a minute still agree on every round.

Each node measures its deadlines on its own clock and no check compares one node's time with
another's, so a skew of ±30 s changes nothing, even when a deadline decides the round.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from consortium.protocol.record import run_records
from consortium.protocol.round import Phase
from tests.inprocess_cluster import cluster, drive, run_config, start

OFFSETS = (-30.0, -10.0, 0.0, 10.0, 30.0)


def test_rounds_complete_with_clocks_30_seconds_apart(tmp_path: Path) -> None:
    async def go() -> None:
        # Five members: the SecAgg+ floor (4 at n = 5) still holds with the leader cut off.
        nodes, net, clock = await cluster(tmp_path, 5, seed=7, offsets=OFFSETS)
        assert sorted(round(n.clock() - clock.now) for n in nodes) == list(OFFSETS)
        try:
            await start(nodes, run_config(3, 7, secure="secagg+"))
            # Round 2's leader goes silent: its successor takes over on a deadline that every
            # node measures on its own skewed clock.
            loop = asyncio.get_running_loop()
            end = loop.time() + 120
            while True:
                m = nodes[0].machine
                if m is not None and m.round == 2 and m.phase is not Phase.DONE and m.beacon:
                    break
                assert loop.time() < end, "round 2 did not begin"
                await asyncio.sleep(0.01)
            leader = next(n for n in nodes if n.identity.node_id == m.leader())
            net.disconnect(leader.identity.node_id)
            survivors = [n for n in nodes if n is not leader]
            await drive(survivors, net, clock)
            assert len({n.ledger.root() for n in survivors}) == 1
            records = run_records(survivors[0].ledger)
            assert [r.round for r in records] == [1, 2, 3]
            assert records[1].attempt >= 1 and records[1].leader != leader.identity.node_id
        finally:
            for n in nodes:
                await n.stop()

    asyncio.run(go())
