"""Percentile bootstrap confidence intervals, and the {mean, ci, n} summaries every reported figure uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(
    values, statistic: Callable[..., float] = np.mean, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """(lo, hi) percentile interval of `statistic` over `n` resamples of the samples (with replacement).

    values: one array [N, ...], or a tuple/list of arrays sharing the leading axis N (resampled jointly,
      e.g. (predicted_labels, reference_labels)); statistic is called with the resampled array(s).
    """
    arrays = (
        [np.asarray(v) for v in values]
        if isinstance(values, (tuple, list)) and values and not np.isscalar(values[0])
        else [np.asarray(values)]
    )
    size = arrays[0].shape[0] if arrays[0].ndim else 0
    if size == 0:
        raise ValueError("bootstrap_ci: no samples")
    if any(a.shape[:1] != (size,) for a in arrays):
        raise ValueError(f"bootstrap_ci: arrays must share the leading axis, got {[a.shape for a in arrays]}")
    if not 0 < alpha < 1 or n < 1:
        raise ValueError(f"bootstrap_ci: need 0 < alpha < 1 and n >= 1, got alpha={alpha}, n={n}")
    index = np.random.default_rng(seed).integers(0, size, size=(n, size))  # [n, N]
    if len(arrays) == 1 and statistic is np.mean and arrays[0].ndim == 1:
        stats = arrays[0][index].mean(axis=1)
    else:
        stats = np.array([statistic(*(a[i] for a in arrays)) for i in index], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarise(values: Sequence[float] | np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """{"mean", "ci": [lo, hi] (95% percentile bootstrap), "n"} of per-sample values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    lo, hi = bootstrap_ci(values, np.mean, n=n_bootstrap, seed=seed)
    return {"mean": float(values.mean()), "ci": [lo, hi], "n": int(values.size)}


def grouped_summaries(
    values: np.ndarray, groups: Sequence[str], n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """summarise() of the samples of each distinct group, in first-seen order."""
    values = np.asarray(values, dtype=np.float64)
    groups = list(groups)
    if len(groups) != len(values):
        raise ValueError(f"grouped_summaries: {len(values)} values but {len(groups)} group keys")
    order = list(dict.fromkeys(groups))
    keys = np.asarray(groups, dtype=object)
    return {g: summarise(values[keys == g], n_bootstrap, seed) for g in order}
