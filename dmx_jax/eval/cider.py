"""CIDEr-D as the COCO caption toolkit computes it (its `Cider` scorer is the CIDEr-D variant).

- n-grams n = 1..4 of `str.split()` tokens, each weighted tf * (log(N) - log(max(1, df))), where N is the
  number of evaluated samples and df counts the samples whose references contain the n-gram: the IDF comes
  from the references of the evaluated set, so a subset's score differs from the full-set score;
- per order: clipped cosine sum_g min(h_g, r_g) r_g / (|h| |r|), times a Gaussian length penalty
  exp(-delta^2 / (2 sigma^2)) with sigma = 6 and delta the difference of the token counts (the toolkit
  counts bigrams, len - 1, which gives the same delta whenever the similarity can be non-zero);
- mean over orders, mean over references, times 10. Corpus score is the mean over samples.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from dmx_jax.eval._inputs import reference_lists
from dmx_jax.eval.ngrams import ngram_counts

MAX_N = 4
SIGMA = 6.0


def _tfidf(counts: Counter, log_n: float, doc_freq: Counter, max_n: int):
    """(per-order {ngram: weight}, per-order L2 norm, token count)."""
    vectors = [dict() for _ in range(max_n)]
    sq_norms = [0.0] * max_n
    for gram, tf in counts.items():
        order = len(gram) - 1
        weight = float(tf) * (log_n - math.log(max(1.0, doc_freq.get(gram, 0))))
        vectors[order][gram] = weight
        sq_norms[order] += weight * weight
    length = sum(tf for gram, tf in counts.items() if len(gram) == 1)
    return vectors, [math.sqrt(s) for s in sq_norms], length


def _similarity(hyp, ref, max_n: int, sigma: float) -> float:
    """Sum over orders of the clipped, length-penalised cosine between one hypothesis and one reference."""
    (h_vec, h_norm, h_len), (r_vec, r_norm, r_len) = hyp, ref
    penalty = math.exp(-(float(h_len - r_len) ** 2) / (2 * sigma**2))
    total = 0.0
    for k in range(max_n):
        dot = sum(min(w, r_vec[k].get(g, 0.0)) * r_vec[k].get(g, 0.0) for g, w in h_vec[k].items())
        if h_norm[k] != 0 and r_norm[k] != 0:
            dot /= h_norm[k] * r_norm[k]
        total += dot * penalty
    return total


def cider_d(
    predictions: Sequence[str], references, max_n: int = MAX_N, sigma: float = SIGMA
) -> tuple[float, np.ndarray]:
    """(corpus CIDEr-D, per-sample CIDEr-D [N])."""
    predictions, references = reference_lists(predictions, references, "cider_d")
    hyp_counts = [ngram_counts(p.split(), max_n) for p in predictions]
    ref_counts = [[ngram_counts(r.split(), max_n) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in ref_counts:
        doc_freq.update(set().union(*(c.keys() for c in refs)))
    log_n = math.log(float(len(predictions)))
    per_sample = []
    for hyp, refs in zip(hyp_counts, ref_counts):
        h = _tfidf(hyp, log_n, doc_freq, max_n)
        score = sum(_similarity(h, _tfidf(r, log_n, doc_freq, max_n), max_n, sigma) for r in refs)
        per_sample.append(score / max_n / len(refs) * 10.0)
    per_sample = np.array(per_sample, dtype=np.float64)
    return float(per_sample.mean()), per_sample
