"""The KZG structured reference string (SRS) every proof and check of a run uses.

Production: a ceremony SRS file supplied by the operator, whose sha256 must equal the hash the
run agreed (the run config's SRS hash, docs/architecture.md "Decided once"); whoever knows the
ceremony's secret could forge proofs, so a locally generated SRS is for tests and demos only, and
every output that uses one says "TEST ONLY". A missing file, a file of another hash, or one too
small for the circuit is one clear error (`srs-missing`, `srs-mismatch`).

The file is halo2's `ParamsKZG` serialisation as EZKL writes it: a little-endian u32 `k` (the
circuit's logrows it serves) first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from consortium.zk.errors import SRS_MISMATCH, SRS_MISSING, ZkError, require_ezkl

TEST_ONLY = "TEST ONLY (locally generated SRS: anyone who ran the generation could forge proofs)"


@dataclass(frozen=True)
class Srs:
    path: Path
    sha256: str  # hex, of the whole file
    logrows: int  # the k the file serves
    test_only: bool

    @property
    def label(self) -> str:
        """How outputs name it: the hash, and TEST ONLY for a generated one."""
        return f"{TEST_ONLY} sha256 {self.sha256}" if self.test_only else f"sha256 {self.sha256}"

    def check_serves(self, logrows: int) -> None:
        if self.logrows < logrows:
            raise ZkError(
                SRS_MISMATCH,
                f"the SRS {self.path} serves circuits of up to 2^{self.logrows} rows; this "
                f"circuit needs 2^{logrows}: supply an SRS of k >= {logrows}",
            )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_k(path: Path) -> int:
    with path.open("rb") as fh:
        head = fh.read(4)
    k = int.from_bytes(head, "little") if len(head) == 4 else 0
    if not 1 <= k <= 28:
        raise ZkError(SRS_MISMATCH, f"{path} is not an SRS file (no k in 1..28 at its start)")
    return k


def load_srs(path: Path, expected_sha256: str) -> Srs:
    """A supplied SRS file, refused unless its sha256 is `expected_sha256` (the agreed hash)."""
    path = Path(path)
    if not path.is_file():
        raise ZkError(SRS_MISSING, f"no SRS file at {path}: supply the run's ceremony SRS")
    expected = expected_sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ZkError(SRS_MISMATCH, f"the expected SRS hash {expected_sha256!r} is not a sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise ZkError(
            SRS_MISMATCH,
            f"{path} has sha256 {actual}, the run agreed {expected}: not the run's SRS",
        )
    return Srs(path, actual, _read_k(path), test_only=False)


def local_test_srs(folder: Path, logrows: int) -> Srs:
    """A locally generated SRS for `logrows` (made once per folder, then reused): TEST ONLY."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"test-only-srs-k{logrows}"
    if not path.is_file():
        tmp = path.with_name(path.name + ".tmp")
        require_ezkl().gen_srs(str(tmp), logrows)
        tmp.replace(path)
    return Srs(path, file_sha256(path), _read_k(path), test_only=True)
