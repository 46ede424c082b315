"""Corpus BLEU-1..n as the COCO caption toolkit (pycocoevalcap) computes it.

- tokens: `str.split()` of the strings as given;
- clipped n-gram matches against the element-wise maximum count over a sample's references;
- effective reference length per sample: the reference length closest to the hypothesis length
  (ties -> the shorter reference), summed over the corpus for the brevity penalty;
- BLEU-k is the geometric mean of the 1..k precisions; the toolkit's guards (1e-15 added to matches,
  1e-9 to guesses and to the reference length) are kept so that scores agree to rounding.
Per-sample scores apply the same formula to one sample at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dmx_jax.eval._inputs import reference_lists
from dmx_jax.eval.ngrams import ngram_counts

_TINY = 1e-15  # added to match counts, so a zero precision stays (almost) zero instead of NaN
_SMALL = 1e-9  # added to denominators


def _sample_stats(prediction: str, refs: list[str], max_n: int) -> tuple[int, int, list[int], list[int]]:
    """(hypothesis length, closest reference length, guesses per order, clipped matches per order)."""
    hyp = prediction.split()
    ref_max: dict = {}
    ref_lens = []
    for ref in refs:
        tokens = ref.split()
        ref_lens.append(len(tokens))
        for gram, count in ngram_counts(tokens, max_n).items():
            if count > ref_max.get(gram, 0):
                ref_max[gram] = count
    closest = min(ref_lens, key=lambda length: (abs(length - len(hyp)), length))
    guesses = [max(0, len(hyp) - k) for k in range(max_n)]
    matches = [0] * max_n
    for gram, count in ngram_counts(hyp, max_n).items():
        matches[len(gram) - 1] += min(count, ref_max.get(gram, 0))
    return len(hyp), closest, guesses, matches


def _bleu_from_stats(hyp_len: float, ref_len: float, guesses, matches) -> list[float]:
    """BLEU-1..n from (summed) statistics, with the toolkit's guards and brevity penalty."""
    scores, product = [], 1.0
    for k, (g, m) in enumerate(zip(guesses, matches)):
        product *= (m + _TINY) / (g + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def bleu(predictions: Sequence[str], references, max_n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(corpus BLEU-1..max_n [max_n], per-sample BLEU-1..max_n [N, max_n])."""
    predictions, references = reference_lists(predictions, references, "bleu")
    stats = [_sample_stats(p, r, max_n) for p, r in zip(predictions, references)]
    per_sample = np.array([_bleu_from_stats(h, r, g, m) for h, r, g, m in stats], dtype=np.float64)
    hyp_total = sum(s[0] for s in stats)
    ref_total = sum(s[1] for s in stats)
    guesses = [sum(s[2][k] for s in stats) for k in range(max_n)]
    matches = [sum(s[3][k] for s in stats) for k in range(max_n)]
    corpus = np.array(_bleu_from_stats(hyp_total, ref_total, guesses, matches), dtype=np.float64)
    return corpus, per_sample
