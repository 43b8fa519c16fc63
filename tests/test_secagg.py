"""SecAgg+: correctness under dropouts, privacy of masked vectors, Shamir threshold, transcript."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from consortium.core.encoding import decode, encode
from consortium.protocol.secagg import (
    SecAggAbort,
    SecAggParams,
    SecAggParamsError,
    SimulatedKeys,
    Transcript,
    TranscriptError,
    crypto,
    dequantize,
    field,
    quantize,
    verify_aggregate,
)
from consortium.protocol.secagg.client import seed_commitment
from consortium.protocol.secagg.sim import PHASES, simulate_round


def ids(n: int) -> list[str]:
    return [f"node-{i:03d}" for i in range(n)]


def plain_sum(
    words: dict[str, npt.NDArray[np.uint32]], nodes: frozenset[str]
) -> npt.NDArray[np.uint32]:
    total = np.zeros(next(iter(words.values())).shape, dtype=np.uint64)
    for node in nodes:
        total += words[node]
    return (total % 2**32).astype(np.uint32)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[SecAggParams, dict[str, set[str]], int]:
    n = draw(st.integers(3, 12))
    degrees = [k for k in range(2, n) if k % 2 == 0] + [n - 1]
    k = draw(st.sampled_from(sorted(set(degrees))))
    t = draw(st.integers((k + 1) // 2 + 1, k + 1))
    d = draw(st.integers(1, 40))
    params = SecAggParams.create(
        draw(st.binary(min_size=1, max_size=16)), ids(n), d, k=k, threshold=t
    )
    order = draw(st.permutations(params.participants))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=4, max_size=4)))
    # Cap total dropouts so most examples stay feasible.
    cuts = [min(c, n // 3 + 1) for c in cuts]
    bounds = [0, *cuts]
    drops = {ph: set(order[bounds[i] : bounds[i + 1]]) for i, ph in enumerate(PHASES)}
    return params, drops, draw(st.integers(0, 2**32 - 1))


def all_holders_live(params: SecAggParams, gone: set[str]) -> bool:
    t = params.threshold
    return all(len((params.neighbours(u) | {u}) - gone) >= t for u in params.participants)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_sum_is_exact_sum_of_survivors(case: tuple[SecAggParams, dict[str, set[str]], int]) -> None:
    params, drops, seed = case
    rng = np.random.default_rng(seed)
    floats = {p: rng.normal(scale=0.3, size=params.vector_length) for p in params.participants}
    words = {p: quantize(x, params.clip, params.scale, rng) for p, x in floats.items()}
    gone = set().union(*drops.values())
    expected = set(params.participants) - drops["keys"] - drops["shares"] - drops["inputs"]
    try:
        result, agg, _ = simulate_round(params, words, dropouts=drops, seed=seed, wire=True)
    except SecAggAbort:
        # Aborting is only allowed when some node lost too many share holders, or too few masked
        # inputs are left for the floor or for a quorum to certify the survivor set.
        floor = max(params.min_survivors, params.quorum)
        assert not all_holders_live(params, gone) or len(expected) < floor
        return
    if all_holders_live(params, gone):
        assert result.contributors == expected
    # Never a wrong answer: whatever it reports is the exact sum of the reported contributors.
    assert result.contributors <= expected
    assert np.array_equal(result.words, plain_sum(words, result.contributors))
    assert result.dropped == frozenset(params.participants) - result.contributors
    clipped = sum(
        (
            floats[p] * min(1.0, params.clip / np.linalg.norm(floats[p]))
            for p in result.contributors
        ),
        np.zeros(params.vector_length),
    )
    assert np.all(np.abs(result.total - clipped) <= len(result.contributors) / params.scale)
    # The auditor recomputes the same sum from the published transcript only.
    body = decode(encode(agg.transcript().to_body()))
    verify = SimulatedKeys.for_participants(params.participants, seed).verify
    assert np.array_equal(
        verify_aggregate(params, Transcript.from_body(body), verify), result.words
    )


def test_round_with_dropouts_in_every_phase() -> None:
    params = SecAggParams.create(b"round-7", ids(12), 257, k=8, threshold=5)
    rng = np.random.default_rng(7)
    words = {p: quantize(rng.normal(size=257), 1.0, params.scale, rng) for p in params.participants}
    p = params.participants
    drops = {"keys": [p[0]], "shares": [p[3]], "inputs": [p[5]], "unmask": [p[9]]}
    result, agg, _ = simulate_round(params, words, dropouts=drops, seed=3)
    assert result.contributors == frozenset(p) - {p[0], p[3], p[5]}
    assert np.array_equal(result.words, plain_sum(words, result.contributors))
    tr = agg.transcript()
    assert set(tr.revealed_mask_keys) == {p[5]}  # only the node that dropped after sharing
    assert set(tr.revealed_seeds) == result.contributors


def test_too_many_dropouts_abort_instead_of_leaking() -> None:
    params = SecAggParams.create(b"r", ids(6), 8, k=4, threshold=4)
    words = {p: np.zeros(8, dtype=np.uint32) for p in params.participants}
    with pytest.raises(SecAggAbort):
        simulate_round(params, words, dropouts={"inputs": params.participants[:3]})


def test_masked_vector_looks_uniform() -> None:
    d = 20_000  # 256 bins of ~78 expected counts; each commitment generator costs ~0.4 ms
    params = SecAggParams.create(b"privacy", ids(3), d, k=2, threshold=2)
    words = {p: np.zeros(d, dtype=np.uint32) for p in params.participants}  # worst case: constant
    _, agg, _ = simulate_round(params, words, seed=42)
    masked = np.frombuffer(agg.masked_input(params.participants[0]), dtype="<u4")
    counts = np.bincount(masked >> 24, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    # Sanity: the same test does flag a non-uniform vector.
    skewed = np.bincount((np.arange(d, dtype=np.uint32) % 200), minlength=256)
    assert stats.chisquare(skewed).pvalue < 1e-3


def test_shamir_threshold() -> None:
    rng = np.random.default_rng(5)
    secret = rng.bytes(32)
    xs = list(range(1, 8))
    shares = field.split(secret, xs, 4, rng.bytes)
    for subset in ([1, 2, 3, 4], [7, 5, 3, 1], [2, 4, 6, 7]):
        assert field.combine({x: shares[x] for x in subset}) == secret
    assert field.combine(shares) == secret
    for subset in ([1, 2, 3], [5, 6, 7]):
        value = field.interpolate({x: shares[x] for x in subset})
        assert value != int.from_bytes(secret, "big")


def test_quantization_roundtrip_and_clip() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    q = quantize(x, 2.0, 1000.0, rng)
    back = dequantize(q, 1000.0)
    clipped = x * 2.0 / np.linalg.norm(x)
    assert np.all(np.abs(back - clipped) <= 1 / 1000.0 + 1e-12)
    # Stochastic rounding is unbiased: the mean error over many coordinates is ~0.
    assert abs(float(np.mean(back - clipped))) < 1e-4


def test_params_refuse_wrapping_and_bad_graphs() -> None:
    with pytest.raises(SecAggParamsError, match="wrap"):
        SecAggParams(b"r", tuple(ids(100)), 4, 3, 10, clip=1.0, scale=2**25)
    with pytest.raises(SecAggParamsError, match="even"):
        SecAggParams(b"r", tuple(ids(10)), 3, 3, 10, clip=1.0, scale=10.0)
    with pytest.raises(SecAggParamsError, match="threshold"):
        SecAggParams(b"r", tuple(ids(10)), 4, 6, 10, clip=1.0, scale=10.0)
    with pytest.raises(SecAggParamsError, match="sorted"):
        SecAggParams(b"r", ("b", "a", "c"), 2, 2, 10, clip=1.0, scale=10.0)


def test_graph_is_regular_symmetric_and_seeded() -> None:
    a = SecAggParams.create(b"round-a", ids(50), 10, k=8)
    again = SecAggParams.create(b"round-a", ids(50), 10, k=8)
    b = SecAggParams.create(b"round-b", ids(50), 10, k=8)
    for u in a.participants:
        assert len(a.neighbours(u)) == 8 and u not in a.neighbours(u)
        assert all(u in a.neighbours(v) for v in a.neighbours(u))
        assert a.neighbours(u) == again.neighbours(u)
    assert any(a.neighbours(u) != b.neighbours(u) for u in a.participants)


def test_transcript_tampering_is_detected() -> None:
    params = SecAggParams.create(b"audit", ids(6), 16, k=4, threshold=3)
    rng = np.random.default_rng(2)
    words = {p: rng.integers(0, 100, 16, dtype=np.uint32) for p in params.participants}
    result, agg, _ = simulate_round(params, words, dropouts={"inputs": [params.participants[1]]})
    verify = SimulatedKeys.for_participants(params.participants, 0).verify
    tr = agg.transcript()
    body = tr.to_body()
    assert np.array_equal(verify_aggregate(params, tr, verify), result.words)
    victim, other, dropped = params.participants[0], params.participants[2], params.participants[1]

    def broken(**changes: object) -> Transcript:
        return Transcript.from_body(body | changes)

    # A wrong sum: one unit moved into the first word (mod 2**32 and in the integers).
    wrong = bytearray(tr.masked_sum)
    wrong[0] ^= 1
    with pytest.raises(TranscriptError, match="does not match the contributors' commitments"):
        verify_aggregate(params, broken(sum=bytes(wrong)), verify)
    with pytest.raises(TranscriptError, match="entries of 5 bytes"):
        verify_aggregate(params, broken(sum=tr.masked_sum[:-1]), verify)
    # A forged or swapped commitment: its sender never signed it.
    swapped = tr.commitments | {victim: tr.commitments[other]}
    with pytest.raises(TranscriptError, match=f"commitment of '{victim}' is not signed"):
        verify_aggregate(params, broken(commitments=swapped), verify)
    with pytest.raises(TranscriptError, match="commitment"):
        verify_aggregate(params, broken(seeds=tr.revealed_seeds | {victim: bytes(32)}), verify)
    # A seed with a matching commitment the leader made up: the commitment is signed too.
    fake = bytes(32)
    forged = tr.seed_commitments | {victim: seed_commitment(tr.round_id, victim, fake)}
    with pytest.raises(TranscriptError, match="not signed"):
        verify_aggregate(
            params,
            broken(seeds=tr.revealed_seeds | {victim: fake}, seed_commitments=forged),
            verify,
        )
    with pytest.raises(TranscriptError, match="public key"):
        verify_aggregate(params, broken(dropped_keys={dropped: bytes(32)}), verify)
    # A dropped member's key pair the leader made up: its public key is not the signed one.
    secret = bytes(range(32))
    enc, _, sig = tr.keys[dropped]
    keys = {u: list(k) for u, k in tr.keys.items()}
    keys[dropped] = [enc, crypto.public_bytes(secret), sig]
    with pytest.raises(TranscriptError, match=f"public keys of '{dropped}' are not signed"):
        verify_aggregate(params, broken(keys=keys, dropped_keys={dropped: secret}), verify)
    # Shapes: another round, a survivor also dropped, an outsider, a survivor without its
    # seed, a dropped member without its signed keys.
    with pytest.raises(TranscriptError, match="another round"):
        verify_aggregate(params, broken(round=b"other"), verify)
    both = tr.revealed_mask_keys | {victim: bytes(32)}
    with pytest.raises(TranscriptError, match="disjoint"):
        verify_aggregate(params, broken(dropped_keys=both), verify)
    with pytest.raises(TranscriptError, match="not a participant"):
        verify_aggregate(params, broken(dropped_keys={"outsider": bytes(32)}), verify)
    seeds = {u: s for u, s in tr.revealed_seeds.items() if u != victim}
    with pytest.raises(TranscriptError, match="every survivor needs"):
        verify_aggregate(params, broken(seeds=seeds), verify)
    keys = {u: list(k) for u, k in tr.keys.items() if u != dropped}
    with pytest.raises(TranscriptError, match="lacks the signed keys"):
        verify_aggregate(params, broken(keys=keys), verify)
    # Version 1 (every masked input published) is refused by name.
    with pytest.raises(TranscriptError, match="version 1 is not supported"):
        Transcript.from_body(body | {"v": 1})
    with pytest.raises(TranscriptError, match="version 1 is not supported"):
        Transcript.from_body({k: v for k, v in body.items() if k != "v"} | {"inputs": {}})
