"""N-gram counting over whitespace tokens (the tokenisation pycocoevalcap's BLEU and CIDEr apply)."""

from __future__ import annotations

from collections import Counter


def ngram_counts(tokens: list[str], max_n: int) -> Counter:
    """Counts of every 1..max_n-gram (as tuples) in `tokens`."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts
