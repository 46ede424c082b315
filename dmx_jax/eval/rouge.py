"""ROUGE-L as the COCO caption toolkit computes it: F-beta (beta = 1.2) of the longest common subsequence.

Per sample: precision = LCS / len(hypothesis) and recall = LCS / len(reference) for every reference, the
maxima of each taken separately, then F = (1 + b^2) P R / (R + b^2 P) (0 when P or R is 0). Corpus score is
the mean over samples. Tokens are `str.split(" ")` (single spaces, as the toolkit does: repeated spaces give
empty tokens and an empty string is one empty token).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmx_jax.eval._inputs import reference_lists

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over `a` (Hyyro's formulation, O(|a||b|/64))."""
    masks: dict = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full  # bit i cleared <=> a[:i+1] gained one more LCS step
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_sample(prediction: str, refs: Sequence[str], beta: float = BETA) -> float:
    hyp = prediction.split(" ")
    best_p = best_r = 0.0
    for ref in refs:
        tokens = ref.split(" ")
        lcs = lcs_length(tokens, hyp)
        best_p = max(best_p, lcs / len(hyp))
        best_r = max(best_r, lcs / len(tokens))
    if best_p == 0 or best_r == 0:
        return 0.0
    return (1 + beta**2) * best_p * best_r / (best_r + beta**2 * best_p)


def rouge_l(predictions: Sequence[str], references, beta: float = BETA) -> tuple[float, np.ndarray]:
    """(corpus ROUGE-L, per-sample ROUGE-L [N])."""
    predictions, references = reference_lists(predictions, references, "rouge_l")
    per_sample = np.array([rouge_l_sample(p, r, beta) for p, r in zip(predictions, references)], dtype=np.float64)
    return float(per_sample.mean()), per_sample
