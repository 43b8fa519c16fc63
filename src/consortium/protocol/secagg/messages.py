"""SecAgg+ messages: small frozen dataclasses with canonical bodies for any transport.

`to_body()` gives a dict of str/bytes/int/lists that `consortium.core.encoding.encode` accepts;
`from_body()` (or `parse_message`) checks every field's type and raises `RejectedMessage` naming
the sender, so a hostile peer's garbage never reaches the state machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from consortium.protocol.secagg.errors import RejectedMessage

Pairs = tuple[tuple[str, bytes], ...]
M = TypeVar("M", bound="_Message")


def _get(body: dict[str, Any], name: str, typ: type, who: str) -> Any:
    value = body.get(name)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise RejectedMessage(who, f"field {name!r} must be {typ.__name__}")
    return value


def _pairs(body: dict[str, Any], name: str, who: str) -> Pairs:
    raw = _get(body, name, dict, who)
    if not all(isinstance(k, str) and isinstance(v, bytes) for k, v in raw.items()):
        raise RejectedMessage(who, f"field {name!r} must map node ids to bytes")
    return tuple(sorted(raw.items()))


def _ids(body: dict[str, Any], name: str, who: str) -> tuple[str, ...]:
    raw = _get(body, name, list, who)
    if not all(isinstance(v, str) for v in raw) or len(set(raw)) != len(raw):
        raise RejectedMessage(who, f"field {name!r} must be a list of distinct node ids")
    return tuple(sorted(raw))


def _who(body: Any) -> str:
    for key in ("sender", "recipient"):
        if isinstance(body, dict) and isinstance(body.get(key), str):
            return str(body[key])
    return "<unknown>"


@dataclass(frozen=True)
class _Message:
    TYPE: ClassVar[str] = ""
    round_id: bytes

    def _base(self) -> dict[str, Any]:
        return {"type": self.TYPE, "round": self.round_id}

    @classmethod
    def from_body(cls: type[M], body: Any) -> M:
        msg = parse_message(body)
        if not isinstance(msg, cls):
            raise RejectedMessage(_who(body), f"expected a {cls.TYPE} message, got {msg.TYPE}")
        return msg


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Client -> aggregator: the two X25519 public keys of this round, signed by the client's
    identity (`auth.key_statement`), so no relay can substitute its own."""

    TYPE: ClassVar[str] = "secagg/advertise-keys"
    sender: str
    enc_key: bytes
    mask_key: bytes
    signature: bytes = b""

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "sender": self.sender,
            "enc": self.enc_key,
            "mask": self.mask_key,
            "sig": self.signature,
        }


@dataclass(frozen=True)
class NeighbourKeys(_Message):
    """Aggregator -> client: signed public keys of the neighbours that advertised
    (id, enc, mask, signature)."""

    TYPE: ClassVar[str] = "secagg/neighbour-keys"
    recipient: str
    keys: tuple[tuple[str, bytes, bytes, bytes], ...]

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "recipient": self.recipient,
            "keys": {node: [enc, mask, sig] for node, enc, mask, sig in self.keys},
        }


@dataclass(frozen=True)
class EncryptedShares(_Message):
    """Client -> aggregator: one AEAD ciphertext of shares per neighbour, a commitment (SHA-256)
    to the self-mask seed so a reconstructed seed can be checked, and per holder (itself
    included) commitments to the two shares it holds, so a share revealed later can be checked
    and a lying revealer named."""

    TYPE: ClassVar[str] = "secagg/encrypted-shares"
    sender: str
    seed_commitment: bytes
    ciphertexts: Pairs
    share_commitments: Pairs = ()

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "sender": self.sender,
            "commit": self.seed_commitment,
            "shares": dict(self.ciphertexts),
            "share_commits": dict(self.share_commitments),
        }


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """Aggregator -> client: the ciphertexts its neighbours addressed to it (sender, ct), and
    each sender's commitments to the shares this client holds (sender, commitment)."""

    TYPE: ClassVar[str] = "secagg/share-delivery"
    recipient: str
    ciphertexts: Pairs
    share_commitments: Pairs = ()

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "recipient": self.recipient,
            "shares": dict(self.ciphertexts),
            "share_commits": dict(self.share_commitments),
        }


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Client -> aggregator: the masked vector (little-endian uint32 words), the homomorphic
    commitment to it (`commitment.commit_words`) and the sender's signature on
    `auth.input_statement` (that commitment and its seed commitment)."""

    TYPE: ClassVar[str] = "secagg/masked-input"
    sender: str
    vector: bytes
    commitment: bytes = b""
    signature: bytes = b""

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "sender": self.sender,
            "vector": self.vector,
            "commit": self.commitment,
            "sig": self.signature,
        }


@dataclass(frozen=True)
class SurvivorSet(_Message):
    """Aggregator -> client: the participants whose masked inputs are in the sum, to sign."""

    TYPE: ClassVar[str] = "secagg/survivor-set"
    recipient: str
    survivors: tuple[str, ...]

    def to_body(self) -> dict[str, Any]:
        return self._base() | {"recipient": self.recipient, "survivors": list(self.survivors)}


@dataclass(frozen=True)
class SurvivorVote(_Message):
    """Client -> aggregator: its signature on the survivor set (`auth.survivors_statement`)."""

    TYPE: ClassVar[str] = "secagg/survivor-vote"
    sender: str
    signature: bytes

    def to_body(self) -> dict[str, Any]:
        return self._base() | {"sender": self.sender, "sig": self.signature}


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Aggregator -> client: reveal seed shares of `survivors`, mask-key shares of `dropped`,
    on the strength of `agreed`, the survivor set a quorum of participants signed."""

    TYPE: ClassVar[str] = "secagg/unmask-request"
    recipient: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    agreed: tuple[str, ...] = ()
    certificate: Pairs = ()

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "recipient": self.recipient,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
            "agreed": list(self.agreed),
            "certificate": dict(self.certificate),
        }


@dataclass(frozen=True)
class UnmaskResponse(_Message):
    """Client -> aggregator: the requested shares, keyed by the peer whose secret they share."""

    TYPE: ClassVar[str] = "secagg/unmask-response"
    sender: str
    seed_shares: Pairs
    key_shares: Pairs

    def to_body(self) -> dict[str, Any]:
        return self._base() | {
            "sender": self.sender,
            "seeds": dict(self.seed_shares),
            "keys": dict(self.key_shares),
        }


Message = (
    AdvertiseKeys
    | NeighbourKeys
    | EncryptedShares
    | ShareDelivery
    | MaskedInput
    | SurvivorSet
    | SurvivorVote
    | UnmaskRequest
    | UnmaskResponse
)


def parse_message(body: Any) -> Message:
    """Rebuild a message from its canonical body, checking every field."""
    who = _who(body)
    if not isinstance(body, dict):
        raise RejectedMessage(who, "message body must be a map")
    kind = body.get("type")
    rid = _get(body, "round", bytes, who)
    if kind == AdvertiseKeys.TYPE:
        return AdvertiseKeys(
            rid,
            _get(body, "sender", str, who),
            _get(body, "enc", bytes, who),
            _get(body, "mask", bytes, who),
            _get(body, "sig", bytes, who),
        )
    if kind == NeighbourKeys.TYPE:
        raw = _get(body, "keys", dict, who)
        keys: list[tuple[str, bytes, bytes, bytes]] = []
        for node, triple in sorted(raw.items()):
            if not (
                isinstance(node, str)
                and isinstance(triple, list)
                and len(triple) == 3
                and all(isinstance(b, bytes) for b in triple)
            ):
                raise RejectedMessage(who, "field 'keys' must map ids to [enc, mask, sig] bytes")
            keys.append((node, triple[0], triple[1], triple[2]))
        return NeighbourKeys(rid, _get(body, "recipient", str, who), tuple(keys))
    if kind == EncryptedShares.TYPE:
        return EncryptedShares(
            rid,
            _get(body, "sender", str, who),
            _get(body, "commit", bytes, who),
            _pairs(body, "shares", who),
            _pairs(body, "share_commits", who),
        )
    if kind == ShareDelivery.TYPE:
        return ShareDelivery(
            rid,
            _get(body, "recipient", str, who),
            _pairs(body, "shares", who),
            _pairs(body, "share_commits", who),
        )
    if kind == MaskedInput.TYPE:
        return MaskedInput(
            rid,
            _get(body, "sender", str, who),
            _get(body, "vector", bytes, who),
            _get(body, "commit", bytes, who),
            _get(body, "sig", bytes, who),
        )
    if kind == SurvivorSet.TYPE:
        return SurvivorSet(rid, _get(body, "recipient", str, who), _ids(body, "survivors", who))
    if kind == SurvivorVote.TYPE:
        return SurvivorVote(rid, _get(body, "sender", str, who), _get(body, "sig", bytes, who))
    if kind == UnmaskRequest.TYPE:
        return UnmaskRequest(
            rid,
            _get(body, "recipient", str, who),
            _ids(body, "survivors", who),
            _ids(body, "dropped", who),
            _ids(body, "agreed", who),
            _pairs(body, "certificate", who),
        )
    if kind == UnmaskResponse.TYPE:
        return UnmaskResponse(
            rid,
            _get(body, "sender", str, who),
            _pairs(body, "seeds", who),
            _pairs(body, "keys", who),
        )
    raise RejectedMessage(who, f"unknown message type {kind!r}")
