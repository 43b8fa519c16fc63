"""The SecAgg+ commitment generators on disk, so a node process does not derive them again.

Deriving G_j (hash-to-curve, `protocol.secagg.commitment.generators`) costs about 0.4 ms per
point: 40 s of one core for a model of 10^5 parameters, in every node process at every start,
and at once in all of them when a machine starts a whole cluster. The points are public
constants, so one machine-wide file serves every node and run: `generators-v1.bin` in
`$CONSORTIUM_CACHE_DIR`, else `$XDG_CACHE_HOME/consortium`, else `~/.cache/consortium`.

Format: a header (magic, the generators' domain-separation tag, the count), the points as
uncompressed little-endian x‖y (96 bytes each, which load at 0.3 µs a point without the subgroup
check), and SHA-256 of everything before it. A reader checks the hash (a torn or corrupted file
is ignored and rewritten) and re-derives a few points at random indices and the last one: a file
of other points (another tag, a bug) is refused, not used. Whoever can write this folder could
give this user's nodes wrong generators, which breaks their commitments (rounds fail to verify),
not the privacy of anyone's input; the folder is the user's own, like the node folder.

One process derives and writes while the others wait on an exclusive `flock`, then read.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import struct
from pathlib import Path

from py_arkworks_bls12381 import G1Point

from consortium.core.errors import ConsortiumError
from consortium.core.files import atomic_write
from consortium.protocol.secagg import commitment

log = logging.getLogger(__name__)

CACHE_FILE = "generators-v1.bin"
LOCK_NAME = "generators-v1.lock"
MAGIC = b"consortium/secagg-generators/v1\n"
POINT_BYTES = 96
#: Points re-derived from scratch on every load, besides the last one.
SPOT_CHECKS = 4


def default_cache_dir() -> Path:
    if env := os.environ.get("CONSORTIUM_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "consortium"


def _header(count: int) -> bytes:
    dst = commitment.GENERATOR_DST
    return MAGIC + struct.pack(">H", len(dst)) + dst + struct.pack(">Q", count)


def encode(points: list[G1Point]) -> bytes:
    body = _header(len(points)) + b"".join(p.to_xy_bytes_le() for p in points)
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, rng: random.Random | None = None) -> list[G1Point]:
    """The points of a cache file; ValueError if it is torn, corrupted or not these generators."""
    if len(data) < len(_header(0)) + 32:
        raise ValueError("shorter than a header")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError("its SHA-256 does not match (torn or corrupted)")
    head = _header(0)[:-8]
    if not body.startswith(head):
        raise ValueError("another format or domain-separation tag")
    (count,) = struct.unpack(">Q", body[len(head) : len(head) + 8])
    raw = body[len(head) + 8 :]
    if len(raw) != count * POINT_BYTES:
        raise ValueError(f"{len(raw)} bytes of points for a count of {count}")
    points = [
        G1Point.from_xy_bytes_unchecked_le(raw[i : i + POINT_BYTES])
        for i in range(0, len(raw), POINT_BYTES)
    ]
    if points:
        pick = rng or random.SystemRandom()
        for j in {count - 1, *(pick.randrange(count) for _ in range(SPOT_CHECKS))}:
            if points[j] != commitment.derive_generator(j):
                raise ValueError(f"point {j} is not the generator G_{j}")
    return points


#: Cache folders this process warmed, and for how many generators.
_WARMED: dict[Path, int] = {}


def warm_generators(words: int, cache_dir: Path | None = None) -> None:
    """Make `commitment.generators(words)` cheap in this process: adopt the cached points,
    derive any missing ones, and save the longer list for the next process. A cache that cannot
    be read or written only costs the derivation; it never fails the caller."""
    folder = cache_dir or default_cache_dir()
    if _WARMED.get(folder, 0) >= words and commitment.derived() >= words:
        return  # done in this process already (a simulation host starts many nodes)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.info("generator cache unavailable (%s): deriving in memory", exc)
        commitment.generators(words)
        return
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        path = folder / CACHE_FILE
        cached: list[G1Point] = []
        if path.exists():
            try:
                cached = decode(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("ignoring the generator cache %s: %s", path, exc)
        commitment.adopt_generators(cached)
        points = commitment.generators(max(words, len(cached)))
        if len(points) > len(cached):
            try:
                atomic_write(path, encode(points))
            except (OSError, ConsortiumError) as exc:
                log.info("could not save the generator cache %s: %s", path, exc)
                return
        _WARMED[folder] = len(points)
    finally:
        os.close(lock_fd)  # drops the flock
