"""VQA scores per dataset and question family.

Each sample is scored by the form of its reference answer (the three branches of the paper's accuracy
reward, with word-level text scores):
- list  (reference contains "|"): F1 of the sets of items (split on "|", normalised, empty items dropped);
- short (at most 2 words): exact match of the normalised strings (1 or 0);
- sentence (otherwise): mean of sentence BLEU-1 and ROUGE-L (beta 1.2), both as in pycocoevalcap, on
  lower-cased text with punctuation split into tokens.
Normalisation: lower-case, collapse whitespace, strip surrounding punctuation and quotes. Predictions are
the extracted final answers (no <think> / \\boxed{} wrappers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dmx_jax.eval.bleu import bleu
from dmx_jax.eval.bootstrap import grouped_summaries, summarise
from dmx_jax.eval.rouge import rouge_l_sample

RULE = (
    "list answers (reference contains '|'): item-set F1; short answers (<= 2 words): exact match after "
    "lower-casing, whitespace collapsing and stripping surrounding punctuation; sentences: mean of BLEU-1 "
    "and ROUGE-L (beta 1.2, pycocoevalcap definitions) on lower-cased, punctuation-split text"
)
_EDGE_PUNCT = " \t\n.,;:!?\"'`()[]{}"


def normalise_answer(text: str) -> str:
    return " ".join(text.lower().split()).strip(_EDGE_PUNCT)


def _sentence_tokens(text: str) -> str:
    return " ".join(re.sub(r"([.,;:!?()\"'])", r" \1 ", text.lower()).split())


def answer_kind(reference: str) -> str:
    """'list', 'short' or 'sentence' (the branch that scores answers to this reference)."""
    if "|" in reference:
        return "list"
    return "short" if len(reference.split()) <= 2 else "sentence"


def item_f1(prediction: str, reference: str) -> float:
    pred = {normalise_answer(x) for x in prediction.split("|")} - {""}
    ref = {normalise_answer(x) for x in reference.split("|")} - {""}
    if not pred and not ref:
        return 1.0
    common = len(pred & ref)
    return 0.0 if common == 0 else 2 * common / (len(pred) + len(ref))


def text_similarity(prediction: str, reference: str) -> float:
    hyp, ref = _sentence_tokens(prediction), _sentence_tokens(reference)
    bleu_1 = bleu([hyp], [[ref]], max_n=1)[1][0, 0]
    return 0.5 * (float(bleu_1) + rouge_l_sample(hyp, [ref]))


def vqa_sample_score(prediction: str, reference: str) -> float:
    kind = answer_kind(reference)
    if kind == "list":
        return item_f1(prediction, reference)
    if kind == "short":
        return float(normalise_answer(prediction) == normalise_answer(reference))
    return text_similarity(prediction, reference)


def vqa_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    datasets: Sequence[str] | None = None,
    question_types: Sequence[str | None] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """{"rule", "overall", "by_kind", "by_dataset": {dataset: {"all", "by_question_type"}}, "per_sample"}.

    Every summary is {"mean", "ci": [lo, hi] (95% bootstrap over samples), "n"}.
    """
    if len(predictions) != len(references):
        raise ValueError(f"vqa_scores: {len(predictions)} predictions but {len(references)} references")
    n = len(references)
    datasets = list(datasets) if datasets is not None else ["all"] * n
    question_types = [q or "unspecified" for q in question_types] if question_types is not None else ["unspecified"] * n
    for name, keys in (("datasets", datasets), ("question_types", question_types)):
        if len(keys) != n:
            raise ValueError(f"vqa_scores: {n} references but {len(keys)} {name}")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise TypeError(f"vqa_scores: predictions[{i}] and references[{i}] must be str")
    scores = np.array([vqa_sample_score(p, r) for p, r in zip(predictions, references)], dtype=np.float64)
    by_dataset = {}
    for ds in dict.fromkeys(datasets):
        mask = np.array([d == ds for d in datasets])
        by_dataset[ds] = {
            "all": summarise(scores[mask], n_bootstrap, seed),
            "by_question_type": grouped_summaries(
                scores[mask], [q for q, m in zip(question_types, mask) if m], n_bootstrap, seed
            ),
        }
    return {
        "rule": RULE,
        "overall": summarise(scores, n_bootstrap, seed),
        "by_kind": grouped_summaries(scores, [answer_kind(r) for r in references], n_bootstrap, seed),
        "by_dataset": by_dataset,
        "per_sample": scores,
    }
