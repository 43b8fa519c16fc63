"""Threshold unique signatures over secp256k1: the cryptography of the shared beacon.

The beacon of a round is a *unique* value that any `t` of the `n` members can compute together and
no `t - 1` of them can predict (a DDH-based threshold VRF, as in DFINITY's and drand's beacons, on a
prime-order curve without pairings):

- **Setup (a joint-Feldman DKG, in the genesis ceremony).** Every member deals a random polynomial
  of degree `t - 1`: Feldman commitments to its coefficients, and one share per member, encrypted
  to that member's X25519 box key. The consortium secret is the sum of the dealt constants; member
  `i` holds `x_i`, the sum of the shares dealt to it, and everyone can compute the public
  verification key `Y_i = x_i G` from the commitments. Nobody ever knows the secret.
- **Evaluation.** For a message `m`, member `i` publishes `sigma_i = x_i H(m)` with a
  Chaum-Pedersen proof that `log_G Y_i = log_H(m) sigma_i`. Any `t` valid partials interpolate
  (Lagrange at 0) to the same point `s H(m)`: which `t` are used does not matter, so whoever
  collects them cannot grind.

Why not a library: `cryptography` exposes no elliptic-curve point arithmetic; `coincurve`
(libsecp256k1) does, and is used for every group operation here. What is written by hand is only
the glue that no maintained Python library offers for secp256k1: hash-to-curve by
try-and-increment (the input is public, so its variable time leaks nothing), Lagrange
coefficients, and the proof's transcript.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from consortium.core.errors import ConsortiumError

#: Order of the secp256k1 group and its base field's prime.
ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
FIELD = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
POINT_BYTES = 33  # compressed
PROOF_BYTES = 64  # challenge c and response z, 32 bytes each
SHARE_CIPHERTEXT_BYTES = 32 + 16  # a scalar and its AEAD tag
_G = PrivateKey((1).to_bytes(32, "big")).public_key
_TAG = b"consortium/threshold/v1/"

#: `random(n)` returns `n` secret random bytes (the caller injects `os.urandom` or a test's PRG).
RandomBytes = Callable[[int], bytes]


def seeded_bytes(seed: bytes) -> RandomBytes:
    """A deterministic byte stream (SHAKE-256 of a counter): reproducible simulations and tests
    only, never a real ceremony."""
    counter = itertools.count()

    def random(n: int) -> bytes:
        return hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)

    return random


class ThresholdError(ConsortiumError):
    """A malformed point, a proof or share that does not verify, or too few partials."""


# -- group helpers ---------------------------------------------------------------------------------


def _scalar(k: int) -> bytes:
    return (k % ORDER).to_bytes(32, "big")


def base_mul(k: int) -> PublicKey:
    """k·G for a nonzero scalar."""
    if k % ORDER == 0:
        raise ThresholdError("zero scalar")
    return PrivateKey(_scalar(k)).public_key


def mul(point: PublicKey, k: int) -> PublicKey:
    if k % ORDER == 0:
        raise ThresholdError("zero scalar")
    return point.multiply(_scalar(k))


def add(points: Sequence[PublicKey]) -> PublicKey:
    try:
        return PublicKey.combine_keys(list(points))
    except ValueError as exc:  # the point at infinity: never for honest inputs
        raise ThresholdError("points sum to the identity") from exc


def point(data: bytes) -> PublicKey:
    """A compressed point from untrusted bytes."""
    if len(data) != POINT_BYTES or data[0] not in (2, 3):
        raise ThresholdError(f"a point is {POINT_BYTES} compressed bytes")
    try:
        return PublicKey(bytes(data))
    except ValueError as exc:
        raise ThresholdError("not a point on secp256k1") from exc


def to_bytes(p: PublicKey) -> bytes:
    return bytes(p.format(compressed=True))


def hash_to_scalar(*parts: bytes) -> int:
    """A nonzero scalar from length-prefixed parts (64 bytes reduced: negligible bias)."""
    h = hashlib.sha512(_TAG + b"scalar")
    for part in parts:
        h.update(len(part).to_bytes(4, "big") + part)
    return int.from_bytes(h.digest(), "big") % (ORDER - 1) + 1


def hash_to_point(message: bytes) -> PublicKey:
    """A point whose discrete log nobody knows: try-and-increment over x-coordinates."""
    for counter in range(256):
        x = hashlib.sha256(_TAG + b"point" + counter.to_bytes(1, "big") + message).digest()
        if int.from_bytes(x, "big") >= FIELD:
            continue
        try:
            return PublicKey(b"\x02" + x)
        except ValueError:
            continue  # x is not on the curve (half of all x): try the next counter
    raise ThresholdError("no curve point found")  # probability 2^-256


def member_index(members: Sequence[str], node_id: str) -> int:
    """The Shamir x-coordinate of a member: 1 + its position among the sorted member ids."""
    return sorted(members).index(node_id) + 1


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients λ_i with f(0) = Σ λ_i f(x_i) for a polynomial of degree < len(xs)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % ORDER
                den = den * (xj - xi) % ORDER
        out.append(num * pow(den, -1, ORDER) % ORDER)
    return out


# -- dealing (genesis) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedShare:
    recipient: str
    ephemeral: bytes  # the dealer's one-use X25519 public key for this share
    ciphertext: bytes


@dataclass(frozen=True)
class Dealing:
    """One member's contribution to the DKG (unsigned: the genesis manifest signs it)."""

    dealer: str
    commitments: tuple[bytes, ...]  # a_k·G for the t coefficients
    shares: tuple[EncryptedShare, ...]  # one per member, in sorted member order


def _share_key(shared: bytes, dealer: str, recipient: str, ephemeral: bytes) -> bytes:
    info = _TAG + b"share|" + dealer.encode() + b"|" + recipient.encode() + b"|" + ephemeral
    return HKDF(hashes.SHA256(), 32, None, info).derive(shared)


def _commitment_digest(commitments: Sequence[bytes]) -> bytes:
    return hashlib.sha256(b"".join(commitments)).digest()


def deal(
    dealer: str, box_keys: Mapping[str, bytes], threshold: int, random: RandomBytes
) -> Dealing:
    """A fresh dealing for the members whose X25519 box keys are `box_keys` (node id -> key)."""
    members = sorted(box_keys)
    if not 1 <= threshold <= len(members):
        raise ThresholdError(f"threshold {threshold} must be between 1 and {len(members)}")
    coeffs = [hash_to_scalar(random(32)) for _ in range(threshold)]
    commitments = tuple(to_bytes(base_mul(a)) for a in coeffs)
    aad = _commitment_digest(commitments)
    shares = []
    for x, recipient in enumerate(members, start=1):
        value = 0
        for a in reversed(coeffs):  # Horner
            value = (value * x + a) % ORDER
        eph = X25519PrivateKey.from_private_bytes(random(32))
        eph_pub = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PublicKey.from_public_bytes(box_keys[recipient]))
        key = _share_key(shared, dealer, recipient, eph_pub)
        ct = ChaCha20Poly1305(key).encrypt(bytes(12), _scalar(value), aad)  # one-use key
        shares.append(EncryptedShare(recipient, eph_pub, ct))
    return Dealing(dealer, commitments, tuple(shares))


def check_dealing_shape(d: Dealing, members: Sequence[str], threshold: int) -> None:
    """What anyone can check: t valid commitments, one well-formed share per member in order."""
    if len(d.commitments) != threshold:
        raise ThresholdError(
            f"dealing of {d.dealer} has {len(d.commitments)} commitments, expected {threshold}"
        )
    for c in d.commitments:
        point(c)
    if [s.recipient for s in d.shares] != sorted(members):
        raise ThresholdError(f"dealing of {d.dealer} does not hold one share per member in order")
    for s in d.shares:
        if len(s.ephemeral) != 32 or len(s.ciphertext) != SHARE_CIPHERTEXT_BYTES:
            raise ThresholdError(f"dealing of {d.dealer}: malformed share for {s.recipient}")


def _commitment_eval(commitments: Sequence[PublicKey], x: int) -> PublicKey:
    """Σ_k x^k C_k: what the share dealt to x-coordinate `x` times G must equal."""
    terms = [commitments[0]]
    power = 1
    for c in commitments[1:]:
        power = power * x % ORDER
        terms.append(mul(c, power))
    return add(terms) if len(terms) > 1 else terms[0]


def open_share(d: Dealing, me: str, members: Sequence[str], box_private: X25519PrivateKey) -> int:
    """Decrypt the share `d` dealt to `me` and check it against the dealer's commitments; a
    share that does not decrypt or does not match is a ThresholdError naming the dealer."""
    share = next((s for s in d.shares if s.recipient == me), None)
    if share is None:
        raise ThresholdError(f"dealing of {d.dealer} holds no share for {me}")
    shared = box_private.exchange(X25519PublicKey.from_public_bytes(share.ephemeral))
    key = _share_key(shared, d.dealer, me, share.ephemeral)
    try:
        plain = ChaCha20Poly1305(key).decrypt(
            bytes(12), share.ciphertext, _commitment_digest(d.commitments)
        )
    except InvalidTag as exc:
        raise ThresholdError(f"the share {d.dealer} dealt to {me} does not decrypt") from exc
    value = int.from_bytes(plain, "big")
    expected = _commitment_eval([point(c) for c in d.commitments], member_index(members, me))
    if value % ORDER == 0 or to_bytes(base_mul(value)) != to_bytes(expected):
        raise ThresholdError(f"the share {d.dealer} dealt to {me} does not match its commitments")
    return value


@dataclass(frozen=True)
class GroupKey:
    """The public side of a finished DKG: the threshold and each member's verification key."""

    threshold: int
    verification: Mapping[str, bytes]  # node id -> Y_i (compressed)

    @property
    def members(self) -> list[str]:
        """The key holders (the beacon group), sorted: their Lagrange indices are 1..n here."""
        return sorted(self.verification)

    @classmethod
    def from_dealings(cls, dealings: Sequence[Dealing], members: Sequence[str], t: int) -> GroupKey:
        # Sum the commitments coefficient-wise first: n·t additions and t multiplications per
        # member, instead of n·t multiplications per member.
        summed = [add([point(d.commitments[k]) for d in dealings]) for k in range(t)]
        ver = {m: to_bytes(_commitment_eval(summed, member_index(members, m))) for m in members}
        return cls(t, ver)


@dataclass(frozen=True)
class SecretShare:
    """This member's x_i (never logged, never written: re-derived from genesis at start)."""

    node_id: str
    value: int

    def __repr__(self) -> str:
        return f"SecretShare(node_id={self.node_id!r})"


# -- evaluation ------------------------------------------------------------------------------------


def _challenge(h: PublicKey, y: bytes, sigma: bytes, a: PublicKey, b: PublicKey) -> int:
    return hash_to_scalar(b"dleq", to_bytes(_G), to_bytes(h), y, sigma, to_bytes(a), to_bytes(b))


def partial(share: SecretShare, message: bytes) -> tuple[bytes, bytes]:
    """sigma_i = x_i H(m) and a Chaum-Pedersen proof that it uses the same x_i as Y_i.

    The proof's nonce is derived from the secret and the message (as RFC 9381's VRFs and RFC 6979
    do): one message always gets one proof, so no nonce is ever reused across messages, and a
    simulated run replays to the same bytes."""
    h = hash_to_point(message)
    sigma = to_bytes(mul(h, share.value))
    y = to_bytes(base_mul(share.value))
    k = hash_to_scalar(b"nonce", _scalar(share.value), message)
    c = _challenge(h, y, sigma, base_mul(k), mul(h, k))
    z = (k + c * share.value) % ORDER
    return sigma, _scalar(c) + _scalar(z)


def verify_partial(y: bytes, message: bytes, sigma: bytes, proof: bytes) -> None:
    """Raise ThresholdError unless `sigma` is the partial on `message` of the member whose
    verification key is `y`."""
    if len(proof) != PROOF_BYTES:
        raise ThresholdError(f"a proof is {PROOF_BYTES} bytes")
    c, z = int.from_bytes(proof[:32], "big"), int.from_bytes(proof[32:], "big")
    if not (0 < c < ORDER and 0 < z < ORDER):
        raise ThresholdError("proof scalars out of range")
    h = hash_to_point(message)
    y_point, s_point = point(y), point(sigma)
    # A = zG - cY and B = zH - c sigma, recomputed; the proof holds iff they hash back to c.
    a = add([base_mul(z), mul(y_point, ORDER - c)])
    b = add([mul(h, z), mul(s_point, ORDER - c)])
    if _challenge(h, y, sigma, a, b) != c:
        raise ThresholdError("the partial's proof does not verify")


def combine(partials: Mapping[int, bytes], threshold: int) -> bytes:
    """s·H(m) from `threshold` verified partials keyed by member index (any subset: same point)."""
    if len(partials) < threshold:
        raise ThresholdError(f"{len(partials)} partials, {threshold} needed")
    xs = sorted(partials)[:threshold]
    lambdas = lagrange_at_zero(xs)
    return to_bytes(add([mul(point(partials[x]), lam) for x, lam in zip(xs, lambdas, strict=True)]))
