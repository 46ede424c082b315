"""Ratings from pairwise outcomes: Bradley-Terry (maximum likelihood, ties as half wins), Elo, win rates.

A comparison is (i, j, s) with s the score of system i against system j: 1 win, 0.5 tie, 0 loss.
- Bradley-Terry: P(i beats j) = sigmoid(theta_i - theta_j). A tie counts as half a win for each side
  (not Davidson's tie parameter). Newton's method on the log-likelihood plus a weak ridge
  (ridge / 2 * |theta|^2, default 0.01) that keeps the estimate finite when a system never loses or never
  wins; at the optimum sum(theta) = 0. `bt_to_elo_scale` maps theta to 1000 + 400 * theta / ln 10.
- Elo: sequential updates (K, base 10, scale 400, start 1000) over the comparisons in random order,
  averaged over several shuffles (Elo depends on order; Bradley-Terry does not).
- Bootstrap over studies: resample studies with replacement, refit, take percentile intervals.
"""

from __future__ import annotations

import math

import numpy as np

ELO_SCALE, ELO_BASE, ELO_START = 400.0, 10.0, 1000.0


def score_matrices(comparisons: np.ndarray, n_systems: int) -> tuple[np.ndarray, np.ndarray]:
    """(wins [P, P]: summed score of row vs column, games [P, P]: number of comparisons, symmetric)."""
    comparisons = np.asarray(comparisons, dtype=np.float64).reshape(-1, 3)
    i, j, s = comparisons[:, 0].astype(int), comparisons[:, 1].astype(int), comparisons[:, 2]
    wins = np.zeros((n_systems, n_systems))
    games = np.zeros((n_systems, n_systems))
    np.add.at(wins, (i, j), s)
    np.add.at(wins, (j, i), 1.0 - s)
    np.add.at(games, (i, j), 1.0)
    np.add.at(games, (j, i), 1.0)
    return wins, games


def bradley_terry_from_matrices(
    wins: np.ndarray, games: np.ndarray, ridge: float = 0.01, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray:
    """theta [P] maximising sum_ij wins_ij log sigmoid(theta_i - theta_j) - ridge / 2 |theta|^2."""
    n = wins.shape[0]
    theta = np.zeros(n)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))  # [P, P] P(row beats column)
        grad = (wins - games * p).sum(axis=1) - ridge * theta
        weight = games * p * (1.0 - p)
        hessian = weight - np.diag(weight.sum(axis=1)) - ridge * np.eye(n)
        step = np.linalg.solve(hessian, grad)
        theta = theta - step
        if np.max(np.abs(step)) < tol:
            break
    return theta


def bradley_terry(comparisons: np.ndarray, n_systems: int, ridge: float = 0.01) -> np.ndarray:
    """theta [n_systems] (log-strengths, sum 0) from comparisons [C, 3] of (i, j, score of i)."""
    return bradley_terry_from_matrices(*score_matrices(comparisons, n_systems), ridge=ridge)


def bt_to_elo_scale(theta: np.ndarray) -> np.ndarray:
    return ELO_START + ELO_SCALE * np.asarray(theta) / math.log(ELO_BASE)


def _elo_batch(i: np.ndarray, j: np.ndarray, s: np.ndarray, valid: np.ndarray, n_systems: int, k: float) -> np.ndarray:
    """Elo ratings [B, P] after running each row's comparison sequence (i, j, s, valid: [B, T])."""
    batch = i.shape[0]
    ratings = np.full((batch, n_systems), ELO_START)
    rows = np.arange(batch)
    for t in range(i.shape[1]):
        a, b = i[:, t], j[:, t]
        expected = 1.0 / (1.0 + ELO_BASE ** ((ratings[rows, b] - ratings[rows, a]) / ELO_SCALE))
        delta = np.where(valid[:, t], k * (s[:, t] - expected), 0.0)
        ratings[rows, a] += delta
        ratings[rows, b] -= delta
    return ratings


def elo(comparisons: np.ndarray, n_systems: int, k: float = 4.0, n_shuffles: int = 16, seed: int = 0) -> np.ndarray:
    """Elo ratings [n_systems], mean over `n_shuffles` random orders of the comparisons."""
    comparisons = np.asarray(comparisons, dtype=np.float64).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(len(comparisons)) for _ in range(n_shuffles)])  # [S, C]
    c = comparisons[order]  # [S, C, 3]
    ratings = _elo_batch(
        c[..., 0].astype(int), c[..., 1].astype(int), c[..., 2], np.ones(order.shape, bool), n_systems, k
    )
    return ratings.mean(axis=0)


def win_rate_matrix(comparisons: np.ndarray, n_systems: int) -> np.ndarray:
    """[P, P] mean score of row against column (ties = 0.5); NaN where they never met."""
    wins, games = score_matrices(comparisons, n_systems)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, wins / np.where(games > 0, games, 1), np.nan)


def bootstrap_ratings(
    comparisons: np.ndarray,
    study_index: np.ndarray,
    n_systems: int,
    n: int = 1000,
    seed: int = 0,
    ridge: float = 0.01,
    elo_k: float = 4.0,
    alpha: float = 0.05,
) -> dict:
    """Percentile CIs over studies: {"bt": [P, 2], "elo": [P, 2]} (rows: lo, hi per system).

    study_index [C]: the study each comparison belongs to (0..S-1).
    """
    comparisons = np.asarray(comparisons, dtype=np.float64).reshape(-1, 3)
    study_index = np.asarray(study_index, dtype=int)
    studies = np.unique(study_index)
    per_study = [np.flatnonzero(study_index == s) for s in studies]
    mats = np.stack([np.stack(score_matrices(comparisons[idx], n_systems)) for idx in per_study])  # [S, 2, P, P]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(studies), size=(n, len(studies)))  # [n, S]
    bt = np.empty((n, n_systems))
    sequences = []
    for b, draw in enumerate(draws):
        counts = np.bincount(draw, minlength=len(studies)).astype(np.float64)
        wins, games = np.tensordot(counts, mats, axes=1)
        bt[b] = bradley_terry_from_matrices(wins, games, ridge=ridge)
        picked = np.concatenate([per_study[s] for s in draw])
        sequences.append(rng.permutation(picked))
    length = max(len(s) for s in sequences)
    idx = np.zeros((n, length), dtype=int)
    valid = np.zeros((n, length), dtype=bool)
    for b, seq in enumerate(sequences):
        idx[b, : len(seq)], valid[b, : len(seq)] = seq, True
    c = comparisons[idx]  # [n, T, 3]
    elo_draws = _elo_batch(c[..., 0].astype(int), c[..., 1].astype(int), c[..., 2], valid, n_systems, elo_k)
    q = [alpha / 2, 1 - alpha / 2]
    return {"bt": np.quantile(bt, q, axis=0).T, "elo": np.quantile(elo_draws, q, axis=0).T}
