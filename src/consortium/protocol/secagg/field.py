"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

Why hand-written: the arithmetic is a dozen lines of Python ints, while the libraries on offer
either share over GF(2**8) byte-wise (PyCryptodome's `Shamir` handles only 16-byte secrets) or
pull in a large dependency for one polynomial. The Mersenne prime 2**521 - 1 is larger than any
256-bit secret, so a seed or an X25519 private key is shared as one field element.

Shares are (x, y) with x = 1 + the holder's index among the round's participants, y encoded as
66 big-endian bytes. Any t shares reconstruct the secret; t - 1 shares are independent of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from consortium.protocol.secagg.errors import SecAggError

PRIME = 2**521 - 1
SHARE_BYTES = 66
SECRET_BYTES = 32

RandomBytes = Callable[[int], bytes]


def _random_element(random: RandomBytes) -> int:
    # Rejection sampling on 521 bits: uniform over the field (only p itself is ever rejected).
    while True:
        value = int.from_bytes(random(SHARE_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def split(secret: bytes, xs: Sequence[int], t: int, random: RandomBytes) -> dict[int, bytes]:
    """Shares of `secret` for holders at `xs` (distinct, 1..p-1), any `t` of which recover it."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= len(xs):
        raise SecAggError(f"threshold {t} must be between 1 and the {len(xs)} share holders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SecAggError("share x-coordinates must be distinct and non-zero")
    coeffs = [int.from_bytes(secret, "big")] + [_random_element(random) for _ in range(t - 1)]
    shares: dict[int, bytes] = {}
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def interpolate(shares: Mapping[int, bytes]) -> int:
    """The polynomial's value at 0 from the given points (the secret if there are >= t)."""
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    if not points or any(len(y) != SHARE_BYTES for y in shares.values()):
        raise SecAggError("shares must be non-empty and each exactly 66 bytes")
    if any(y >= PRIME for _, y in points):
        raise SecAggError("a share value is not a field element")
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The 32-byte secret from at least t shares; raises if the result cannot be a secret."""
    value = interpolate(shares)
    if value >= 1 << (8 * SECRET_BYTES):
        raise SecAggError("shares do not reconstruct a 32-byte secret (too few or corrupt)")
    return value.to_bytes(SECRET_BYTES, "big")
