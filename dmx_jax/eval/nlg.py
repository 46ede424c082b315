"""Report-generation text metrics: BLEU-1..4, ROUGE-L (beta 1.2), CIDEr-D and, when available, METEOR.

All follow the COCO caption toolkit (pycocoevalcap) on the strings as given: whitespace tokens, no
lower-casing or punctuation splitting (normalise before calling if wanted). Only METEOR uses the toolkit
itself (its Java jar); the others are implemented in this package.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from dmx_jax.eval._inputs import reference_lists
from dmx_jax.eval.bleu import bleu
from dmx_jax.eval.cider import cider_d
from dmx_jax.eval.meteor import meteor as meteor_score
from dmx_jax.eval.meteor import meteor_availability
from dmx_jax.eval.rouge import rouge_l


def _use_meteor(meteor: bool | None) -> bool:
    if meteor is False:
        return False
    ok, why = meteor_availability()
    if ok:
        return True
    if meteor:
        raise RuntimeError(f"nlg_scores: METEOR requested but unavailable: {why}")
    warnings.warn(f"METEOR omitted: {why}", RuntimeWarning, stacklevel=3)
    return False


def _compute(predictions, references, meteor: bool | None):
    predictions, references = reference_lists(predictions, references, "nlg_scores")
    corpus: dict[str, float] = {}
    per_sample: dict[str, np.ndarray] = {}
    bleu_corpus, bleu_samples = bleu(predictions, references, 4)
    for k in range(4):
        corpus[f"bleu_{k + 1}"] = float(bleu_corpus[k])
        per_sample[f"bleu_{k + 1}"] = bleu_samples[:, k]
    corpus["rouge_l"], per_sample["rouge_l"] = rouge_l(predictions, references)
    corpus["cider"], per_sample["cider"] = cider_d(predictions, references)
    if _use_meteor(meteor):
        corpus["meteor"], per_sample["meteor"] = meteor_score(predictions, references)
    return corpus, per_sample


def nlg_scores(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, meteor: bool | None = None
) -> dict[str, float]:
    """Corpus scores {bleu_1..bleu_4, rouge_l, cider[, meteor]}.

    references: one string or a non-empty list of strings per prediction.
    meteor: None (default) adds METEOR when java and pycocoevalcap's jar are present, else warns once
      why it is omitted; False skips it silently; True raises when it cannot run.
    """
    return _compute(predictions, references, meteor)[0]


def nlg_sample_scores(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *, meteor: bool | None = None
) -> dict[str, np.ndarray]:
    """Per-sample scores, same keys as `nlg_scores`, each a float64 array [N] (inputs for bootstrap_ci).

    The corpus BLEU and CIDEr are not means of these (BLEU pools counts; CIDEr's IDF is set-wide).
    """
    return _compute(predictions, references, meteor)[1]
