"""Privacy layer: config, accounting against dp-accounting, noise, client-level plan, budgets."""

from __future__ import annotations

import math

import dp_accounting  # type: ignore[import-untyped]
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]
from opacus.accountants import RDPAccountant  # type: ignore[import-untyped]

from consortium.core.errors import ConfigError
from consortium.privacy import accounting, client_dp, noise
from consortium.privacy.budget import Budget, BudgetTracker, recompute_totals, totals
from consortium.privacy.config import Accountant, PrivacyConfig, load_privacy_config
from consortium.privacy.errors import BudgetExceeded, PrivacyError
from consortium.protocol.secagg.quantize import dequantize, quantize

DELTA = 1e-5

# -- config ----------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    assert load_privacy_config(None).unit == "none"
    cfg = load_privacy_config({"unit": "both", "noise_multiplier": 1.1, "dropout_tolerance": 0.25})
    assert cfg.record_level and cfg.client_level and cfg.max_dropouts(8) == 2
    assert load_privacy_config({"unit": "client", "target_epsilon": 3.0}).target_epsilon == 3.0
    assert (
        PrivacyConfig(unit="client", noise_multiplier=1.0, dropout_tolerance=2).max_dropouts(5) == 2
    )


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"unit": "record"}, "exactly one of noise_multiplier and target_epsilon"),
        ({"unit": "record", "noise_multiplier": 1, "target_epsilon": 2}, "got both"),
        ({"noise_multiplier": 1.0}, "unit is 'none'"),
        ({"unit": "client", "noise_multiplier": 1, "dropout_tolerance": 1.5}, "fraction"),
        ({"unit": "client", "noise_multiplier": -1}, "noise_multiplier"),
        ({"unit": "client", "noise_multiplier": 1, "delta": 1.0}, "delta"),
        ({"unit": "sometimes"}, "unit"),
        ({"unit": "client", "noise_multiplier": 1, "bogus": 1}, "bogus"),
    ],
)
def test_config_errors_are_clear(table: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match="invalid \\[privacy\\]") as info:
        load_privacy_config(table)
    assert words in str(info.value)


def test_max_dropouts_must_leave_a_node() -> None:
    with pytest.raises(ConfigError, match="at least one must remain"):
        PrivacyConfig(unit="client", noise_multiplier=1.0, dropout_tolerance=3).max_dropouts(3)


# -- accounting against dp-accounting ---------------------------------------------------------


def _reference(z: float, q: float, count: int, acc: object) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), count
    )
    acc.compose(event)  # type: ignore[attr-defined]
    return float(acc.get_epsilon(DELTA))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("z", "q", "steps"), [(1.1, 0.01, 1000), (0.8, 0.05, 300), (2.0, 0.2, 50)])
def test_record_epsilon_equals_dp_accounting(z: float, q: float, steps: int) -> None:
    want_rdp = _reference(z, q, steps, rdp_privacy_accountant.RdpAccountant())
    want_pld = _reference(z, q, steps, pld_privacy_accountant.PLDAccountant())
    assert accounting.record_epsilon(z, q, steps, DELTA) == pytest.approx(want_rdp, rel=1e-12)
    assert accounting.record_epsilon(z, q, steps, DELTA, "pld") == pytest.approx(
        want_pld, rel=1e-12
    )
    assert want_pld < want_rdp  # PLD is the tighter of the two bounds
    if (z, q, steps) == (1.1, 0.01, 1000):
        # Opacus' independent RDP implementation agrees (its orders differ slightly) and the
        # value is pinned, so a change of library behaviour shows up.
        opacus_acc = RDPAccountant()
        opacus_acc.history = [(z, q, steps)]
        assert opacus_acc.get_epsilon(DELTA) == pytest.approx(want_rdp, rel=1e-2)
        assert want_rdp == pytest.approx(1.71177, rel=1e-5)


def test_client_epsilon_equals_dp_accounting() -> None:
    # Without client sampling: the plain Gaussian mechanism composed over the rounds.
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(5.0), 20))
    assert accounting.client_epsilon(5.0, 1.0, 20, DELTA) == pytest.approx(
        acc.get_epsilon(DELTA), rel=1e-12
    )
    want = _reference(1.3, 0.1, 100, rdp_privacy_accountant.RdpAccountant())
    assert accounting.client_epsilon(1.3, 0.1, 100, DELTA) == pytest.approx(want, rel=1e-12)


def test_epsilon_edge_cases() -> None:
    assert accounting.record_epsilon(0.0, 0.1, 10, DELTA) == math.inf
    assert accounting.record_epsilon(1.0, 0.1, 0, DELTA) == 0.0
    assert accounting.record_epsilon(1.0, 0.1, 10, DELTA) < accounting.record_epsilon(
        1.0, 0.1, 20, DELTA
    )
    with pytest.raises(ConfigError, match="sampling rate"):
        accounting.record_epsilon(1.0, 1.5, 10, DELTA)


@pytest.mark.parametrize("acc", ["rdp", "pld"])
def test_noise_multiplier_for_hits_target(acc: Accountant) -> None:
    z = accounting.noise_multiplier_for(3.0, 0.05, 200, DELTA, acc, rel_tol=1e-2)
    assert accounting.record_epsilon(z, 0.05, 200, DELTA, acc) <= 3.0
    # ... and is the smallest such z, within the tolerance.
    assert accounting.record_epsilon(z / 1.01, 0.05, 200, DELTA, acc) > 3.0


def test_noise_multiplier_for_unreachable() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        accounting.noise_multiplier_for(1e-6, 1.0, 10_000, 1e-12)


def test_per_round_spends_add_up_to_the_composed_total() -> None:
    seg = accounting.Segment(1.0, 0.1, 30)
    history: list[accounting.Segment] = []
    spends = []
    for _ in range(5):
        spend, total = accounting.per_round_spend(history, seg, DELTA)
        spends.append(spend)
        history.append(seg)
    assert sum(spends) == pytest.approx(total, rel=1e-12)
    assert total == pytest.approx(accounting.record_epsilon(1.0, 0.1, 150, DELTA), rel=1e-12)
    assert spends[0] > spends[-1] > 0  # sublinear composition: later rounds cost less


# -- discrete Gaussian noise -------------------------------------------------------------------


def _dg_moments(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(-int(12 * sigma) - 5, int(12 * sigma) + 6)
    w = np.exp(-(k.astype(np.float64) ** 2) / (2 * sigma**2))
    return k, w / w.sum()


@pytest.mark.parametrize(("sigma", "seed"), [(0.5, 1), (3.0, 2), (40.0, 3), (1e6, 4)])
def test_discrete_gaussian_has_the_claimed_variance(sigma: float, seed: int) -> None:
    n = 200_000
    x = noise.discrete_gaussian(sigma, n, np.random.default_rng(seed))
    assert x.dtype == np.int64
    k, p = _dg_moments(min(sigma, 1e3))
    var = float((p * k**2).sum()) if sigma < 1e3 else sigma**2  # exact law; = sigma² for large
    fourth = float((p * k**4).sum()) if sigma < 1e3 else 3 * sigma**4
    # 5 standard errors of the sample mean and variance for n draws.
    assert abs(x.mean()) <= 5 * math.sqrt(var / n)
    assert abs(x.var() - var) <= 5 * math.sqrt((fourth - var**2) / n)
    if sigma >= 3:
        assert var == pytest.approx(sigma**2, rel=1e-9)


def test_discrete_gaussian_pmf_matches_small_sigma() -> None:
    n = 100_000
    x = noise.discrete_gaussian(1.0, n, np.random.default_rng(7))
    k, p = _dg_moments(1.0)
    for value, prob in zip(k, p, strict=True):
        if prob > 1e-4:
            freq = float(np.mean(x == value))
            assert abs(freq - prob) <= 5 * math.sqrt(prob * (1 - prob) / n), value


def test_noise_is_seeded_and_zero_sigma_is_zero() -> None:
    a = noise.discrete_gaussian(5.0, 1000, np.random.default_rng(1))
    b = noise.discrete_gaussian(5.0, 1000, np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, noise.discrete_gaussian(5.0, 1000, np.random.default_rng(2)))
    assert not noise.discrete_gaussian(0.0, 10, np.random.default_rng(1)).any()
    assert noise.node_noise_share(10, 4.0, 3, 1).shape == (10,)  # OS entropy path


def test_surviving_shares_sum_to_the_target_variance() -> None:
    sigma, n_nodes, drop, d = 50.0, 6, 2, 100_000
    rng = np.random.default_rng(11)
    shares = [noise.node_noise_share(d, sigma, n_nodes, drop, rng) for _ in range(n_nodes - drop)]
    total = np.sum(shares, axis=0)
    # Var of the sample variance of a Gaussian: 2 sigma^4 / d; allow 5 standard errors.
    assert abs(total.var() - sigma**2) <= 5 * sigma**2 * math.sqrt(2 / d)
    assert noise.share_sigma(sigma, n_nodes, drop) == pytest.approx(sigma / 2)
    with pytest.raises(ConfigError):
        noise.share_sigma(sigma, 3, 3)


def test_add_to_words_is_modular_and_spares_the_weight_word() -> None:
    words = np.array([5, 2**32 - 3, 7], dtype=np.uint32)  # 5, -3, weight 7
    out = noise.add_to_words(words, np.array([-10, 4], dtype=np.int64))
    assert out.view(np.int32).tolist() == [-5, 1, 7]


# -- client level: plan, headroom, end to end on the grid -------------------------------------


def test_client_plan_and_survivor_check() -> None:
    p = client_dp.plan(
        1.5, client_clip=1.0, max_weight=0.25, scale=1e6, d=400, n_expected=4, max_dropouts=1
    )
    assert p.sensitivity == pytest.approx(0.25e6 + 20)
    assert p.sigma_total == pytest.approx(1.5 * p.sensitivity)
    assert p.sigma_share == pytest.approx(p.sigma_total / math.sqrt(3))
    client_dp.check_survivors(3, p)
    with pytest.raises(PrivacyError, match="less noise than accounted"):
        client_dp.check_survivors(2, p)
    with pytest.raises(PrivacyError, match="too small"):
        client_dp.plan(0.1, 1.0, 0.1, scale=1.0, d=100, n_expected=10, max_dropouts=0)


def test_noisy_sum_on_the_grid_decodes_to_mean_plus_noise() -> None:
    """Four nodes quantize with the headroom scale, add shares, sum mod 2**32: the decoded sum is
    the true sum plus noise of the planned std, and nothing wraps."""
    n, d, z, clip = 4, 20_000, 2.0, 1.0
    rng = np.random.default_rng(5)
    w = 1.0 / n
    scale = client_dp.scale_with_headroom(n, clip + 1.0, z, clip, w, d, max_dropouts=1)
    p = client_dp.plan(z, clip, w, scale, d, n, 1)
    updates = [rng.normal(size=d) for _ in range(n)]
    updates = [u / np.linalg.norm(u) * clip for u in updates]  # at the clip: worst case
    acc = np.zeros(d + 1, dtype=np.uint32)
    for u in updates:
        vec = np.concatenate([u * w, [w]])
        words = quantize(vec, clip + 1.0, scale, rng)
        words = noise.add_to_words(words, noise.node_noise_share(d, p.sigma_total, n, 1, rng))
        acc = acc + words  # uint32 arithmetic wraps mod 2**32, like SecAgg's sum
    total = dequantize(acc, scale)
    assert total[-1] == pytest.approx(1.0, abs=n / scale)
    err = total[:-1] - np.sum(updates, axis=0) * w
    # All 4 shares present: variance 4/3 of the guaranteed sigma².
    want = p.sigma_total * math.sqrt(n / (n - 1)) / scale
    assert abs(err.std() - want) <= 5 * want / math.sqrt(2 * d)


# -- budgets -----------------------------------------------------------------------------------


def _run(tracker: BudgetTracker, rounds: int) -> list[dict[str, object]]:
    bodies = []
    for r in range(1, rounds + 1):
        body = tracker.next_round(r, client=(2.0, 1.0), record={"n1": (1.0, 0.1, 20)})
        tracker.commit(body)
        bodies.append(body)
    return bodies


def test_tracker_records_spends_and_audit_agrees() -> None:
    budget = Budget(8.0, DELTA, "diagnosis")
    tracker = BudgetTracker(budget, "both")
    bodies = _run(tracker, 3)
    last = bodies[-1]
    assert last["client"]["total_epsilon"] == pytest.approx(  # type: ignore[index]
        accounting.client_epsilon(2.0, 1.0, 3, DELTA), rel=1e-12
    )
    assert last["record"]["n1"]["total_epsilon"] == pytest.approx(  # type: ignore[index]
        accounting.record_epsilon(1.0, 0.1, 60, DELTA), rel=1e-12
    )
    assert recompute_totals(bodies, budget) == []
    assert set(totals(bodies)) == {"client", "record:n1"}


def test_budget_stops_before_the_round_that_would_exceed() -> None:
    eps3 = accounting.client_epsilon(2.0, 1.0, 3, DELTA)
    eps4 = accounting.client_epsilon(2.0, 1.0, 4, DELTA)
    budget = Budget((eps3 + eps4) / 2, DELTA, "p")
    tracker = BudgetTracker(budget, "client")
    for r in range(1, 4):
        tracker.commit(tracker.next_round(r, client=(2.0, 1.0)))
    assert tracker.would_exceed(eps4 - eps3)
    assert not tracker.would_exceed(0.0)
    with pytest.raises(BudgetExceeded, match="stopping before round 4: client-level epsilon"):
        tracker.next_round(4, client=(2.0, 1.0))
    assert len(tracker.client_history) == 3  # nothing was charged


def test_no_noise_is_an_infinite_spend() -> None:
    tracker = BudgetTracker(Budget(10.0, DELTA), "client")
    with pytest.raises(BudgetExceeded, match="inf"):
        tracker.next_round(1, client=(0.0, 1.0))
    unbounded = BudgetTracker(Budget.from_purpose("open", None, None), "client")
    body = unbounded.next_round(1, client=(0.0, 1.0))
    assert body["client"]["epsilon"] is None  # dag-cbor has no infinity


def test_audit_flags_tampered_and_inconsistent_records() -> None:
    budget = Budget(8.0, DELTA, "diagnosis")
    bodies = _run(BudgetTracker(budget, "both"), 3)
    bodies[1]["client"]["total_epsilon"] *= 0.5  # type: ignore[index]
    bodies[2]["record"]["n1"]["epsilon"] = 0.0  # type: ignore[index]
    problems = recompute_totals(bodies, budget)
    assert any(p.startswith("round 2: client: total_epsilon") for p in problems)
    assert any(p.startswith("round 3: record n1: epsilon") for p in problems)
    # A wrong delta, accountant or purpose is flagged, as is an overrun of the budget.
    bad = [dict(bodies[0], delta=1e-3, accountant="magic")]
    assert len(recompute_totals(bad, budget)) == 2
    tight = Budget(bodies[0]["client"]["total_epsilon"] / 2, DELTA, "diagnosis")  # type: ignore[index]
    assert any("exceeds budget" in p for p in recompute_totals(bodies[:1], tight))
    assert any("malformed" in p for p in recompute_totals([dict(bodies[0], client={})], budget))


def test_budget_config_checks() -> None:
    budget = Budget.from_purpose("p", 3.0, 1e-6)
    with pytest.raises(ConfigError, match="exceeds purpose"):
        budget.check_config(PrivacyConfig(unit="client", noise_multiplier=1.0, delta=1e-5))
    with pytest.raises(ConfigError, match="no delta"):
        Budget.from_purpose("p", 3.0, None)
