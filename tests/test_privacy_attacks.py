"""Membership inference attacks and their figures (`consortium.audit.privacy`): the ROC metrics
against scikit-learn's, and the attacks against models whose training data we know: one that
overfit a few records (the attacks must find them) and one that never saw the records called
members (they must do no better than chance)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from consortium.audit.privacy.membership import Recipe, Targets, run_attacks
from consortium.audit.privacy.metrics import (
    clopper_pearson,
    dp_auc_bound,
    dp_tpr_bound,
    label_weights,
    roc,
)
from consortium.audit.privacy.mia import lira_offline, rmia_offline
from consortium.learning.adapter import get_weights
from consortium.learning.builtin import builtin_task
from consortium.learning.task import Examples, NodeContext, build_model, train_task
from consortium.learning.train import TrainConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models: intra-op threads only contend on a busy 2-core machine (30x slower measured).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- metrics -------------------------------------------------------------------------------------


def test_auc_and_roc_agree_with_scikit_learn_with_weights_and_ties() -> None:
    rng = np.random.default_rng(3)
    members = np.round(rng.normal(0.4, 1, 300), 1)  # rounded: many ties
    non = np.round(rng.normal(0, 1, 500), 1)
    weights = rng.uniform(0.2, 3, 500)
    r = roc(members, non, weights)
    y = np.r_[np.ones(300), np.zeros(500)]
    s = np.r_[members, non]
    w = np.r_[np.ones(300), weights]
    assert r.auc == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    assert np.allclose(r.fpr, fpr) and np.allclose(r.tpr, tpr)
    for f in (0.01, 0.05, 0.2):
        assert r.tpr_at(f) == pytest.approx(tpr[fpr <= f + 1e-12].max())
    assert r.non_members == pytest.approx(weights.sum() ** 2 / (weights**2).sum())


def test_roc_of_perfect_useless_and_reversed_scores() -> None:
    perfect = roc([5, 6, 7], [1, 2, 3, 4])
    assert perfect.auc == 1.0 and perfect.tpr_at(0.0) == 1.0
    constant = roc([1.0] * 10, [1.0] * 30)
    assert constant.auc == 0.5 and constant.tpr_at(0.01) == 0.0
    assert roc([1, 2], [3, 4]).auc == 0.0
    with pytest.raises(ValueError):
        roc([], [1.0])
    with pytest.raises(ValueError):
        roc([1.0], [math.nan])


def test_a_low_fpr_is_measurable_only_with_enough_non_members() -> None:
    assert roc([1.0], np.arange(100.0)).measurable(0.01)
    assert not roc([1.0], np.arange(99.0)).measurable(0.01)
    assert not roc([1.0], np.arange(999.0)).measurable(0.001)
    assert roc([1.0], np.arange(1000.0)).measurable(0.001)
    # Weights count by their effective number: 1000 non-members, almost all weight on one.
    w = np.r_[1000.0, np.full(999, 1e-3)]
    assert not roc([1.0], np.arange(1000.0), w).measurable(0.01)


def test_label_weights_give_the_non_members_the_members_label_mix() -> None:
    members = np.array([0] * 80 + [1] * 20 + [7] * 5)  # class 7: no non-member has it
    non = np.array([0] * 50 + [1] * 150)
    w, keep = label_weights(members, non)
    assert keep.sum() == 100 and not keep[-5:].any()
    share0 = w[non == 0].sum() / w.sum()
    assert share0 == pytest.approx(0.8)


def test_dp_bounds() -> None:
    assert dp_tpr_bound(0.01, 0.0, 0.0) == pytest.approx(0.01)
    assert dp_tpr_bound(0.01, 1.0, 1e-5) == pytest.approx(math.e * 0.01 + 1e-5)
    assert dp_tpr_bound(0.5, 8.0, 1e-5) == pytest.approx(1 - math.exp(-8) * (0.5 - 1e-5))
    assert dp_tpr_bound(0.01, math.inf, 0.0) == 1.0
    assert dp_auc_bound(0.0, 0.0) == pytest.approx(0.5, abs=1e-6)
    assert 0.5 < dp_auc_bound(1.0, 1e-5) < dp_auc_bound(3.0, 1e-5) < 1.0
    lo, hi = clopper_pearson(5, 100)
    assert 0.016 < lo < 0.017 and 0.112 < hi < 0.113  # the textbook interval of 5/100


def test_likelihood_ratio_scores_use_only_the_out_models() -> None:
    target = np.array([2.0, 2.0])
    reference = np.array([[1.0, 5.0], [3.0, -7.0]])
    out = np.array([[True, False], [True, True]])
    lira = lira_offline(target, reference, out)
    # record 0: mean of both models (2) -> score 0; record 1: model 1 only (-7) -> high.
    assert lira[0] == pytest.approx(0.0) and lira[1] > 0
    rmia = rmia_offline(target, reference, True, out)
    assert rmia[1] > rmia[0]
    with pytest.raises(ValueError):
        lira_offline(target, reference, np.array([[True, False], [True, False]]))


# -- the attacks against models whose training we know -------------------------------------------

TASK = builtin_task("digits", "mlp")
RECIPE = Recipe(epochs=10, batch_size=16, lr=0.1, momentum=0.9)
ROUNDS = 3
REFERENCE_MODELS = 4  # two per half of the non-members: enough to tell, cheap (digits, 30 epochs)


def _data() -> tuple[Examples, Examples]:
    train, test = TASK.data(NodeContext(seed=0))
    return train, test


def _trained_on(examples: Examples, seed: int) -> dict[str, np.ndarray]:
    model, _ = build_model(TASK, seed)
    for r in range(1, ROUNDS + 1):
        cfg = TrainConfig(
            epochs=RECIPE.epochs,
            batch_size=RECIPE.batch_size,
            lr=RECIPE.lr,
            momentum=RECIPE.momentum,
            seed=seed * 100 + r,
        )
        train_task(TASK, model, examples, cfg, None)
    return get_weights(model)


def _attack(members: Examples, weights: dict[str, np.ndarray], non: Examples) -> dict[str, float]:
    targets = Targets(members, non, {ROUNDS: np.ones(len(members), dtype=bool)})
    results = run_attacks(
        TASK,
        RECIPE,
        {ROUNDS: lambda: weights},
        targets,
        reference_models=REFERENCE_MODELS,
        seed=11,
    )
    return {name: a.auc for name, a in results[ROUNDS].items()}


def test_the_attacks_find_the_records_of_an_overfit_model() -> None:
    """An MLP trained 30 epochs on 40 digits memorises them: every attack must tell them from
    the test split clearly, AUC above 0.65 (with 40 members and 359 non-members the AUC of a
    useless score has a standard error of about 0.05; measured here: 0.74 loss, 0.72 LiRA,
    0.77 RMIA)."""
    train, test = _data()
    members = train.take(np.random.default_rng(3).permutation(len(train))[:40])
    aucs = _attack(members, _trained_on(members, 5), test)
    assert set(aucs) == {"loss", "lira", "rmia"}
    assert all(auc > 0.65 for auc in aucs.values()), aucs


def test_the_attacks_do_no_better_than_chance_on_records_the_model_never_saw() -> None:
    """The same recipe on other records: the 200 records called members were never trained on,
    so every AUC must be 0.5 within 0.08 (about three null standard errors with 200 members
    and 359 non-members, fixed seeds). A LiRA or RMIA that scored a non-member with a reference
    model trained on it would push the AUC well above 0.5 here."""
    train, test = _data()
    order = np.random.default_rng(2).permutation(len(train))
    unseen, trained = train.take(order[:200]), train.take(order[200:240])
    aucs = _attack(unseen, _trained_on(trained, 6), test)
    assert all(abs(auc - 0.5) < 0.08 for auc in aucs.values()), aucs
