"""Publishable record of an aggregation and the check anyone can run on it without the inputs.

Version 2 (issue 15). The transcript holds only what the aggregator (any member may lead) saw,
and less: not the masked inputs themselves, but

- the *integer* sum S of the survivors' masked inputs (not reduced mod 2**32; `sum_width` bytes
  per entry), and each survivor's signed homomorphic commitment to its masked input
  (`commitment.py`) together with the commitment to its self-mask seed it signed alongside;
- every node's signed public keys (so revealed mask keys, and the pairwise masks they rebuild,
  are checked against keys their owners signed, not keys the publisher chose);
- the revealed self-mask seeds of survivors and the mask private keys of dropped nodes.

A checker verifies the signatures, checks sum_j S_j·G_j == sum_i C_i (one multi-scalar
multiplication of length d), reduces S mod 2**32 and removes the masks itself (AES-CTR). Per-input
traffic is gone: a voter downloads one sum of 5 bytes per word (up to 256 contributors) instead of
n vectors of 4. Survivors' pairwise masks stay secret, so individual inputs remain hidden (a
commitment is a deterministic function of a masked input, which the leader sees anyway).

Version 1 (each masked input in full, with its SHA-256) is refused by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.protocol.secagg import commitment, crypto
from consortium.protocol.secagg.auth import Verifier, input_statement, key_statement
from consortium.protocol.secagg.client import seed_commitment
from consortium.protocol.secagg.errors import SecAggError, TranscriptError
from consortium.protocol.secagg.params import SecAggParams

TYPE = "secagg/transcript"
VERSION = 2


def unmask_words(
    params: SecAggParams,
    masked_sum: npt.NDArray[np.uint32],
    survivors: list[str],
    seeds: Mapping[str, bytes],
    dropped_keys: Mapping[str, bytes],
    mask_keys: Mapping[str, bytes],
) -> npt.NDArray[np.uint32]:
    """The survivors' masked sum (mod 2**32) with every mask removed.

    Survivors' pairwise masks cancel in the sum; their self masks PRG(b_u) are subtracted; for each
    dropped u, the masks its surviving neighbours v added (+PRG(s_uv) if v < u, else -) are undone.
    """
    total = np.array(masked_sum, dtype=np.uint32, copy=True)
    prg = crypto.MaskPrg(params.vector_length)
    for node in sorted(survivors):
        prg.add(total, seeds[node], -1)
    rid = params.round_id
    alive = set(survivors)
    for u in sorted(dropped_keys):
        for v in sorted(params.neighbours(u) & alive):
            seed = crypto.agree(dropped_keys[u], mask_keys[v], crypto.mask_info(rid, u, v))
            prg.add(total, seed, -1 if v < u else +1)
    return total


def integer_sum(vectors: Mapping[str, bytes], d: int) -> npt.NDArray[np.uint64]:
    """The exact integer sum of masked inputs (little-endian uint32 words each)."""
    total = np.zeros(d, dtype=np.uint64)
    for node in sorted(vectors):
        total += np.frombuffer(vectors[node], dtype="<u4")
    return total


def input_digest(vector_commitment: bytes) -> bytes:
    """What a round record holds per contributor under SecAgg+: SHA-256 of the commitment to
    its masked input (binding the input, since the commitment is)."""
    return hashlib.sha256(vector_commitment).digest()


@dataclass(frozen=True)
class Transcript:
    round_id: bytes
    masked_sum: bytes  # integer sum of the survivors' masked inputs, `sum_width` bytes per entry
    commitments: dict[str, bytes]  # survivor -> commitment to its masked input
    input_signatures: dict[str, bytes]  # survivor -> signature on `auth.input_statement`
    seed_commitments: dict[str, bytes]  # survivor -> commitment to its self-mask seed
    keys: dict[str, tuple[bytes, bytes, bytes]]  # node that sent shares -> (enc, mask, signature)
    revealed_seeds: dict[str, bytes]  # survivors' self-mask seeds
    revealed_mask_keys: dict[str, bytes]  # dropped nodes' mask private keys

    @property
    def survivors(self) -> tuple[str, ...]:
        return tuple(sorted(self.commitments))

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(sorted(self.revealed_mask_keys))

    @property
    def input_hashes(self) -> dict[str, bytes]:
        """Per survivor, what the round record commits to (`input_digest`)."""
        return {u: input_digest(c) for u, c in sorted(self.commitments.items())}

    def to_body(self) -> dict[str, Any]:
        return {
            "type": TYPE,
            "v": VERSION,
            "round": self.round_id,
            "sum": self.masked_sum,
            "commitments": self.commitments,
            "input_sigs": self.input_signatures,
            "seed_commitments": self.seed_commitments,
            "keys": {u: list(k) for u, k in self.keys.items()},
            "seeds": self.revealed_seeds,
            "dropped_keys": self.revealed_mask_keys,
        }

    @classmethod
    def from_body(cls, body: Any) -> Transcript:
        if not isinstance(body, dict) or body.get("type") != TYPE:
            raise TranscriptError("not a secagg transcript")
        version = body.get("v", 1)
        if version != VERSION:
            raise TranscriptError(
                f"transcript version {version} is not supported (this reader takes version "
                f"{VERSION}; version 1 published every masked input and was replaced by signed "
                "commitments and their sum)"
            )
        known = {"type", "v", "round", "sum", "commitments", "input_sigs", "seed_commitments"}
        known |= {"keys", "seeds", "dropped_keys"}
        extra = sorted(set(body) - known)
        if extra:
            raise TranscriptError(f"transcript has unknown fields {extra}")

        def maps(name: str) -> dict[str, bytes]:
            raw = body.get(name)
            if not isinstance(raw, dict) or not all(
                isinstance(k, str) and isinstance(v, bytes) for k, v in raw.items()
            ):
                raise TranscriptError(f"transcript field {name!r} must map ids to bytes")
            return dict(raw)

        raw_keys = body.get("keys")
        if not isinstance(raw_keys, dict) or not all(
            isinstance(k, str)
            and isinstance(v, list)
            and len(v) == 3
            and all(isinstance(b, bytes) for b in v)
            for k, v in raw_keys.items()
        ):
            raise TranscriptError("transcript field 'keys' must map ids to [enc, mask, sig]")
        rid, total = body.get("round"), body.get("sum")
        if not isinstance(rid, bytes) or not isinstance(total, bytes):
            raise TranscriptError("transcript round and sum must be bytes")
        return cls(
            rid,
            total,
            maps("commitments"),
            maps("input_sigs"),
            maps("seed_commitments"),
            {k: (v[0], v[1], v[2]) for k, v in raw_keys.items()},
            maps("seeds"),
            maps("dropped_keys"),
        )


def verify_aggregate(
    params: SecAggParams, transcript: Transcript, verify: Verifier
) -> npt.NDArray[np.uint32]:
    """The unmasked aggregate (mod 2**32) the transcript proves; raise TranscriptError on any
    mismatch. `verify` checks a member's signature on a statement (bound to the consortium)."""
    tr = transcript
    if tr.round_id != params.round_id:
        raise TranscriptError("transcript is for another round")
    survivors, dropped = set(tr.commitments), set(tr.revealed_mask_keys)
    if not survivors or survivors & dropped:
        raise TranscriptError("survivors must be non-empty and disjoint from dropped nodes")
    if not all(params.is_participant(p) for p in survivors | dropped | set(tr.keys)):
        raise TranscriptError("transcript names a node that is not a participant")
    if not (
        tr.revealed_seeds.keys() == tr.input_signatures.keys() == survivors
        and tr.seed_commitments.keys() == survivors
    ):
        raise TranscriptError("every survivor needs a signed commitment and a revealed seed")
    rid = tr.round_id
    for node in sorted(survivors):
        statement = input_statement(rid, node, tr.commitments[node], tr.seed_commitments[node])
        if not verify(node, statement, tr.input_signatures[node]):
            raise TranscriptError(f"commitment of {node!r} is not signed by {node!r}")
        seed = tr.revealed_seeds[node]
        if seed_commitment(rid, node, seed) != tr.seed_commitments[node]:
            raise TranscriptError(f"revealed seed of {node!r} does not match its commitment")
    needed = set().union(*(params.neighbours(u) & survivors for u in dropped)) if dropped else set()
    if not (needed | dropped) <= tr.keys.keys():
        raise TranscriptError("transcript lacks the signed keys of dropped nodes or their peers")
    for node in sorted(needed | dropped):
        enc, mask, sig = tr.keys[node]
        if not verify(node, key_statement(rid, node, enc, mask), sig):
            raise TranscriptError(f"public keys of {node!r} are not signed by {node!r}")
    for node, secret in tr.revealed_mask_keys.items():
        if len(secret) != crypto.KEY_BYTES or crypto.public_bytes(secret) != tr.keys[node][1]:
            raise TranscriptError(f"revealed mask key of {node!r} does not match its public key")
    d = params.vector_length
    try:
        total = commitment.decode_sum(tr.masked_sum, d, commitment.sum_width(len(survivors)))
        matches = commitment.sum_matches(total, (tr.commitments[u] for u in sorted(survivors)))
    except SecAggError as exc:
        raise TranscriptError(f"published sum: {exc}") from exc
    if not matches:
        raise TranscriptError(
            "the published sum of masked inputs does not match the contributors' commitments"
        )
    masked = (total & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    mask_keys = {u: k[1] for u, k in tr.keys.items()}
    return unmask_words(
        params, masked, sorted(survivors), tr.revealed_seeds, tr.revealed_mask_keys, mask_keys
    )
