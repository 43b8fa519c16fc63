"""Publishable record of an aggregation and the auditor's recomputation of the sum.

The transcript holds only what an honest-but-curious aggregator already saw and may publish:
each masked input and its SHA-256, the public mask keys, the self-mask seeds of survivors, and
the mask private keys of dropped nodes. Survivors' pairwise masks stay secret, so individual
inputs remain hidden; yet anyone can recompute the aggregate from this record alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.protocol.secagg import crypto
from consortium.protocol.secagg.client import seed_commitment
from consortium.protocol.secagg.errors import TranscriptError
from consortium.protocol.secagg.params import SecAggParams


def unmask_sum(
    params: SecAggParams,
    inputs: Mapping[str, npt.NDArray[np.uint32]],
    seeds: Mapping[str, bytes],
    dropped_keys: Mapping[str, bytes],
    mask_keys: Mapping[str, bytes],
) -> npt.NDArray[np.uint32]:
    """Sum of the survivors' inputs with every mask removed.

    Survivors' pairwise masks cancel in the sum; their self masks PRG(b_u) are subtracted; for each
    dropped u, the masks its surviving neighbours v added (+PRG(s_uv) if v < u, else -) are undone.
    """
    total = np.zeros(params.vector_length, dtype=np.uint32)
    prg = crypto.MaskPrg(params.vector_length)
    for node in sorted(inputs):
        np.add(total, inputs[node], out=total)
        prg.add(total, seeds[node], -1)
    rid = params.round_id
    for u in sorted(dropped_keys):
        for v in sorted(params.neighbours(u) & inputs.keys()):
            seed = crypto.agree(dropped_keys[u], mask_keys[v], crypto.mask_info(rid, u, v))
            prg.add(total, seed, -1 if v < u else +1)
    return total


@dataclass(frozen=True)
class Transcript:
    round_id: bytes
    masked_inputs: dict[str, bytes]
    input_hashes: dict[str, bytes]
    mask_keys: dict[str, bytes]  # public mask keys of every node that sent shares
    seed_commitments: dict[str, bytes]
    revealed_seeds: dict[str, bytes]  # survivors' self-mask seeds
    revealed_mask_keys: dict[str, bytes]  # dropped nodes' mask private keys
    aggregate: bytes  # the claimed sum, little-endian uint32 words

    @property
    def survivors(self) -> tuple[str, ...]:
        return tuple(sorted(self.masked_inputs))

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(sorted(self.revealed_mask_keys))

    def to_body(self) -> dict[str, Any]:
        return {
            "type": "secagg/transcript",
            "round": self.round_id,
            "inputs": self.masked_inputs,
            "hashes": self.input_hashes,
            "mask_keys": self.mask_keys,
            "commitments": self.seed_commitments,
            "seeds": self.revealed_seeds,
            "dropped_keys": self.revealed_mask_keys,
            "aggregate": self.aggregate,
        }

    @classmethod
    def from_body(cls, body: Any) -> Transcript:
        if not isinstance(body, dict) or body.get("type") != "secagg/transcript":
            raise TranscriptError("not a secagg transcript")

        def maps(name: str) -> dict[str, bytes]:
            raw = body.get(name)
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, bytes) for k, v in raw.items()
            ):
                raise TranscriptError(f"transcript field {name!r} must map ids to bytes")
            return dict(raw)

        rid, agg = body.get("round"), body.get("aggregate")
        if not isinstance(rid, bytes) or not isinstance(agg, bytes):
            raise TranscriptError("transcript round and aggregate must be bytes")
        return cls(
            rid,
            maps("inputs"),
            maps("hashes"),
            maps("mask_keys"),
            maps("commitments"),
            maps("seeds"),
            maps("dropped_keys"),
            agg,
        )


def verify_aggregate(params: SecAggParams, transcript: Transcript) -> npt.NDArray[np.uint32]:
    """Recompute the aggregate from the transcript alone; raise TranscriptError on any mismatch."""
    tr = transcript
    if tr.round_id != params.round_id:
        raise TranscriptError("transcript is for another round")
    survivors, dropped = set(tr.masked_inputs), set(tr.revealed_mask_keys)
    if not survivors or survivors & dropped:
        raise TranscriptError("survivors must be non-empty and disjoint from dropped nodes")
    if not all(params.is_participant(p) for p in survivors | dropped):
        raise TranscriptError("transcript names a node that is not a participant")
    if tr.revealed_seeds.keys() != survivors or tr.input_hashes.keys() != survivors:
        raise TranscriptError("every survivor needs a masked input, its hash and its seed")
    inputs: dict[str, npt.NDArray[np.uint32]] = {}
    for node, raw in tr.masked_inputs.items():
        if len(raw) != 4 * params.vector_length:
            raise TranscriptError(f"masked input of {node!r} has the wrong length")
        if hashlib.sha256(raw).digest() != tr.input_hashes[node]:
            raise TranscriptError(f"masked input of {node!r} does not match its hash")
        seed = tr.revealed_seeds[node]
        if seed_commitment(tr.round_id, node, seed) != tr.seed_commitments.get(node):
            raise TranscriptError(f"revealed seed of {node!r} does not match its commitment")
        inputs[node] = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    for node, secret in tr.revealed_mask_keys.items():
        if len(secret) != crypto.KEY_BYTES or crypto.public_bytes(secret) != tr.mask_keys.get(node):
            raise TranscriptError(f"revealed mask key of {node!r} does not match its public key")
    needed = set().union(*(params.neighbours(u) & survivors for u in dropped)) if dropped else set()
    if not needed <= tr.mask_keys.keys():
        raise TranscriptError("transcript lacks mask keys of survivors next to dropped nodes")
    total = unmask_sum(params, inputs, tr.revealed_seeds, tr.revealed_mask_keys, tr.mask_keys)
    if total.astype("<u4").tobytes() != tr.aggregate:
        raise TranscriptError("recomputed aggregate differs from the published one")
    return total
