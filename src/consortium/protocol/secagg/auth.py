"""Who said what in a SecAgg+ round: signed keys, input commitments and survivor sets.

Without signatures the aggregator (the round's leader, who may be dishonest) could relay its own
keys in place of a neighbour's and decrypt every share, show different participants different
survivor sets, or publish a sum of inputs nobody sent. So each participant signs (round id, its
public keys), the commitments to its masked input and self-mask seed, and the survivor set it
agrees to; every receiver checks against the members' identity keys. The package takes the two
operations as callables: a node signs with its identity key, bound to the consortium's genesis
digest (`RoundMachine`); simulations and benchmarks use `SimulatedKeys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.core.encoding import encode

#: Signs a statement (a canonical-encodable map) as this participant.
Signer = Callable[[dict[str, Any]], bytes]
#: Whether `signature` by participant `node` covers `statement`.
Verifier = Callable[[str, dict[str, Any], bytes], bool]


def key_statement(round_id: bytes, node: str, enc_key: bytes, mask_key: bytes) -> dict[str, Any]:
    return {"secagg": "keys", "round": round_id, "node": node, "enc": enc_key, "mask": mask_key}


def input_statement(
    round_id: bytes, node: str, commitment: bytes, seed_commitment: bytes
) -> dict[str, Any]:
    """What a contributor signs with its masked input: the vector commitment to it and the
    commitment to its self-mask seed, so neither the sum it enters nor the seed that unmasks it
    can be swapped by whoever relays or publishes them."""
    return {
        "secagg": "input",
        "round": round_id,
        "node": node,
        "vector": commitment,
        "seed": seed_commitment,
    }


def survivors_statement(round_id: bytes, survivors: Iterable[str]) -> dict[str, Any]:
    return {"secagg": "survivors", "round": round_id, "set": sorted(survivors)}


def set_digest(round_id: bytes, survivors: Iterable[str]) -> bytes:
    """What a member persists before it signs a survivor set: one set per attempt, ever."""
    return hashlib.sha256(encode(survivors_statement(round_id, survivors))).digest()


@dataclass
class SimulatedKeys:
    """Ed25519 keys for simulated participants (never for a real node)."""

    keys: dict[str, Ed25519PrivateKey]
    _last: tuple[object, bytes] = (None, b"")

    @classmethod
    def for_participants(cls, participants: Iterable[str], seed: int = 0) -> SimulatedKeys:
        return cls(
            {
                p: Ed25519PrivateKey.from_private_bytes(
                    hashlib.sha256(b"secagg-test-key/%d/" % seed + p.encode()).digest()
                )
                for p in participants
            }
        )

    def signer(self, node: str) -> Signer:
        key = self.keys[node]
        return lambda statement: key.sign(encode(statement))

    def verify(self, node: str, statement: dict[str, Any], signature: bytes) -> bool:
        key = self.keys.get(node)
        if key is None:
            return False
        if self._last[0] is not statement:  # one certificate: one statement, many signers
            self._last = (statement, encode(statement))
        try:
            key.public_key().verify(signature, self._last[1])
        except (InvalidSignature, ValueError):
            return False
        return True
