"""Bradley-Terry / Elo / win rates: recovery of known strengths and agreement with a generic optimiser."""

from __future__ import annotations

import numpy as np
import pytest

from dmx_jax.eval.arena.rating import (
    bootstrap_ratings,
    bradley_terry,
    bt_to_elo_scale,
    elo,
    score_matrices,
    win_rate_matrix,
)

scipy_optimize = pytest.importorskip("scipy.optimize")
scipy_stats = pytest.importorskip("scipy.stats")

TRUE = np.array([1.2, 0.6, 0.1, -0.3, -0.6, -1.0])


def simulate(theta, per_pair, seed, tie_prob=0.0):
    """Comparisons [C, 3] from the Bradley-Terry model; with tie_prob a fraction of games are ties."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(len(theta)):
        for j in range(i + 1, len(theta)):
            p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
            wins = rng.random(per_pair) < p
            ties = rng.random(per_pair) < tie_prob
            rows += [(i, j, 0.5 if t else float(w)) for w, t in zip(wins, ties)]
    rows = np.array(rows)
    return rows[rng.permutation(len(rows))]


def test_bradley_terry_recovers_known_strengths():
    comps = simulate(TRUE, per_pair=400, seed=0)
    theta = bradley_terry(comps, len(TRUE))
    assert scipy_stats.spearmanr(theta, TRUE).statistic == pytest.approx(1.0)
    assert np.max(np.abs(theta - (TRUE - TRUE.mean()))) < 0.15  # ~3 standard errors at 400 games per pair
    assert abs(theta.sum()) < 1e-8


def test_bradley_terry_matches_generic_optimiser_with_ties():
    comps = simulate(TRUE[:4], per_pair=30, seed=1, tie_prob=0.2)
    wins, games = score_matrices(comps, 4)
    ridge = 0.01

    def neg_log_lik(t):  # written independently from the per-comparison form
        i, j, s = comps[:, 0].astype(int), comps[:, 1].astype(int), comps[:, 2]
        d = t[i] - t[j]
        return -np.sum(s * -np.logaddexp(0, -d) + (1 - s) * -np.logaddexp(0, d)) + ridge / 2 * t @ t

    ref = scipy_optimize.minimize(neg_log_lik, np.zeros(4), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(bradley_terry(comps, 4, ridge=ridge), ref, atol=1e-5)
    assert wins.sum() == len(comps) and np.allclose(games, games.T)


def test_ties_keep_the_ranking_and_degenerate_winner_stays_finite():
    comps = simulate(TRUE, per_pair=300, seed=2, tie_prob=0.3)
    assert scipy_stats.spearmanr(bradley_terry(comps, len(TRUE)), TRUE).statistic == pytest.approx(1.0)
    sweep = np.array([(0, 1, 1.0)] * 20 + [(1, 2, 1.0)] * 20)  # system 0 never loses
    theta = bradley_terry(sweep, 3)
    assert np.all(np.isfinite(theta)) and theta[0] > theta[1] > theta[2]


def test_elo_ordering_matches_bradley_terry():
    comps = simulate(TRUE, per_pair=200, seed=3)
    ratings = elo(comps, len(TRUE), k=4, seed=0)
    assert list(np.argsort(-ratings)) == list(np.argsort(-TRUE))
    assert ratings.mean() == pytest.approx(1000.0)  # Elo updates are zero-sum
    assert scipy_stats.spearmanr(ratings, bt_to_elo_scale(bradley_terry(comps, len(TRUE)))).statistic == 1.0


def test_win_rate_matrix_and_bootstrap_cis():
    comps = np.array([(0, 1, 1.0), (0, 1, 0.5), (1, 0, 1.0), (1, 2, 0.0)])
    wr = win_rate_matrix(comps, 3)
    assert wr[0, 1] == pytest.approx((1 + 0.5 + 0) / 3) and wr[1, 0] == pytest.approx((0 + 0.5 + 1) / 3)
    assert wr[2, 1] == 1.0 and np.isnan(wr[0, 2]) and np.isnan(wr[0, 0])
    sim = simulate(TRUE[:3], per_pair=150, seed=4)
    study = np.arange(len(sim)) // 3  # three comparisons per study
    ci = bootstrap_ratings(sim, study, 3, n=200, seed=0)
    theta = bradley_terry(sim, 3)
    assert ci["bt"].shape == (3, 2) and np.all(ci["bt"][:, 0] <= theta) and np.all(theta <= ci["bt"][:, 1])
    assert np.all(ci["elo"][:, 0] < ci["elo"][:, 1])
