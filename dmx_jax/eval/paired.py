"""Paired comparisons on the same held-out prompts: bootstrap CIs of per-example differences.

Two systems (two training stages, or one stage with real vs swapped images) scored on the same examples are
compared by the mean of the per-example differences; resampling the examples keeps each pair together, so
the interval is much narrower than the difference of two independent CIs when the systems agree on most items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dmx_jax.eval.bootstrap import summarise


def paired_difference(a: Sequence[float], b: Sequence[float], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """{"mean", "ci", "n", "excludes_zero"} of b - a over paired samples (95% percentile bootstrap)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference: need two 1-D arrays of one length, got {a.shape} and {b.shape}")
    out = summarise(b - a, n_bootstrap, seed)
    lo, hi = out["ci"]
    out["excludes_zero"] = bool(out["n"] and (lo > 0 or hi < 0))
    return out


def paired_by_key(a: Mapping[str, float], b: Mapping[str, float], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """paired_difference over the keys (example ids) both mappings hold, b - a, in sorted key order."""
    keys = sorted(a.keys() & b.keys())
    return paired_difference([a[k] for k in keys], [b[k] for k in keys], n_bootstrap, seed)


def stage_differences(
    scores: Mapping[str, Mapping[str, Mapping[str, float]]],
    pairs: Sequence[tuple[str, str]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """scores: {stage: {metric: {example_id: value}}} -> {"later-earlier": {metric: paired summary}} for each
    (earlier, later) pair present; a metric is compared only when both stages scored it."""
    out = {}
    for first, second in pairs:
        if first not in scores or second not in scores:
            continue
        diffs = {}
        for metric in scores[first]:
            if metric in scores[second]:
                d = paired_by_key(scores[first][metric], scores[second][metric], n_bootstrap, seed)
                if d["n"]:
                    diffs[metric] = d
        out[f"{second}-{first}"] = diffs
    return out
