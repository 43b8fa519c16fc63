"""The commitment generators on disk (node.generator_cache): read back only if they are the
generators, rewritten when torn, and never a reason for a node to fail."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from consortium.node import generator_cache as gc
from consortium.protocol.secagg import commitment

N = 12


def _truth(n: int = N) -> list:
    return [commitment.derive_generator(j) for j in range(n)]


def test_warm_writes_a_file_that_reads_back_as_the_generators(tmp_path: Path) -> None:
    gc.warm_generators(N, tmp_path)
    points = gc.decode((tmp_path / gc.CACHE_FILE).read_bytes())
    assert points == _truth()
    assert commitment.generators(N) == _truth()


def test_a_longer_request_extends_the_file(tmp_path: Path) -> None:
    gc.warm_generators(5, tmp_path)
    gc.warm_generators(N, tmp_path)
    assert len(gc.decode((tmp_path / gc.CACHE_FILE).read_bytes())) >= N


def test_a_corrupted_file_is_refused_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / gc.CACHE_FILE
    data = bytearray(gc.encode(_truth()))
    data[200] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        gc.decode(path.read_bytes())
    gc.warm_generators(N, tmp_path)
    assert gc.decode(path.read_bytes())[:N] == _truth()


def test_other_points_with_a_valid_hash_are_refused() -> None:
    """A file that hashes right but holds other points (a bug, another tag) is not used: the
    last point and random ones are derived again."""
    forged = _truth()
    forged[-1] = commitment.derive_generator(N + 5)
    with pytest.raises(ValueError, match=f"point {N - 1} is not the generator"):
        gc.decode(gc.encode(forged), random.Random(0))
    swapped = _truth()
    swapped[3], swapped[4] = swapped[4], swapped[3]

    class Picks(random.Random):
        def randrange(self, *_: object) -> int:  # type: ignore[override]
            return 3

    with pytest.raises(ValueError, match="point 3 is not the generator"):
        gc.decode(gc.encode(swapped), Picks())


def test_another_domain_tag_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commitment, "GENERATOR_DST", b"another/tag")
    data = gc.encode(_truth(3))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="domain-separation tag"):
        gc.decode(data)


def test_an_unusable_cache_folder_only_costs_the_derivation(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # mkdir fails even for root
    gc.warm_generators(N, blocker / "cache")
    assert commitment.generators(N) == _truth()
    assert blocker.read_text() == "not a folder"


def test_the_sum_memo_changes_no_answer() -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, 2**32, N, dtype=np.uint64).astype(np.uint32) for _ in range(3)]
    commits = [commitment.commit_words(x) for x in inputs]
    total = np.sum([x.astype(np.uint64) for x in inputs], axis=0)
    assert commitment.sum_matches(total, commits)
    assert commitment.sum_matches(total, commits)  # remembered
    assert not commitment.sum_matches(total, commits[:2])  # same sum, other commitments
    wrong = total.copy()
    wrong[0] += 1
    assert not commitment.sum_matches(wrong, commits)
