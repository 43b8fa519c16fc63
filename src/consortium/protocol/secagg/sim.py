"""In-memory driver: one SecAgg+ round between simulated clients and an aggregator.

Used by tests, benchmarks and the simulator. Messages can be sent through their canonical
encoding (`wire=True`) to prove they survive any transport. Dropouts are given per phase:
"keys" (never advertises), "shares" (advertised, sends no shares), "inputs" (sent shares, sends
no masked input), "unmask" (sent its input, does not answer the unmask request).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from consortium.core.encoding import decode, encode
from consortium.protocol.secagg.aggregator import AggregateResult, SecAggAggregator
from consortium.protocol.secagg.auth import SimulatedKeys
from consortium.protocol.secagg.client import SecAggClient
from consortium.protocol.secagg.messages import Message, parse_message
from consortium.protocol.secagg.params import SecAggParams

PHASES = ("keys", "shares", "inputs", "unmask")
M = TypeVar("M", bound=Message)


def _wire(msg: M, on: bool) -> M:
    if not on:
        return msg
    back = parse_message(decode(encode(msg.to_body())))
    assert type(back) is type(msg)
    return back


def simulate_round(
    params: SecAggParams,
    inputs: Mapping[str, npt.NDArray[np.uint32]],
    *,
    dropouts: Mapping[str, Iterable[str]] | None = None,
    seed: int = 0,
    wire: bool = False,
) -> tuple[AggregateResult, SecAggAggregator, dict[str, SecAggClient]]:
    """Run one round; `inputs` maps every participant to its quantized vector."""
    drop = {phase: set((dropouts or {}).get(phase, ())) for phase in PHASES}
    unknown = set(dropouts or {}) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown dropout phases {sorted(unknown)}; use {PHASES}")
    root = np.random.SeedSequence(seed)
    gens = root.spawn(params.n)
    auth = SimulatedKeys.for_participants(params.participants, seed)
    clients = {
        p: SecAggClient(
            params, p, signer=auth.signer(p), verify=auth.verify, rng=np.random.default_rng(g)
        )
        for p, g in zip(params.participants, gens, strict=True)
    }
    agg = SecAggAggregator(params, auth.verify)
    gone: set[str] = set()

    gone |= drop["keys"]
    for p, c in clients.items():
        if p not in gone:
            agg.receive(_wire(c.advertise_keys(), wire))
    keys = agg.finish_keys()

    gone |= drop["shares"]
    for m in keys:
        if m.recipient not in gone:
            agg.receive(_wire(clients[m.recipient].receive_neighbour_keys(_wire(m, wire)), wire))
    deliveries = agg.finish_shares()

    gone |= drop["inputs"]
    for d in deliveries:
        if d.recipient not in gone:
            c = clients[d.recipient]
            c.receive_shares(_wire(d, wire))
            agg.receive(_wire(c.masked_input(inputs[d.recipient]), wire))
    sets = agg.finish_inputs()
    for s in sets:
        agg.receive(_wire(clients[s.recipient].receive_survivor_set(_wire(s, wire)), wire))
    requests = agg.finish_agreement()

    gone |= drop["unmask"]
    for r in requests:
        if r.recipient not in gone:
            agg.receive(_wire(clients[r.recipient].receive_unmask_request(_wire(r, wire)), wire))
    return agg.finish(), agg, clients
