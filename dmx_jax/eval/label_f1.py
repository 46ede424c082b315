"""Micro / macro F1 between two CheXpert label matrices (the "CheXbert-style" report metric).

Labels are binarised with uncertain counted as positive: 1 and -1 -> 1, 0 and NaN -> 0 (the "rrg"
convention of f1chexbert). Micro F1 pools TP/FP/FN over the classes; macro F1 averages per-class F1,
a class with no positive in either matrix scoring `zero_division` (0, as sklearn's default).
With labels from `chexpert_labels` call the result "rule-CheXpert F1", never CheXbert F1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmx_jax.eval.chexpert_labeler import CHEXPERT_LABELS, chexpert_labels

CHEXPERT5_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
RULE = "uncertain (-1) counted as positive; 0 and NaN (unmentioned) negative"


def binarise(labels: np.ndarray, uncertain_as_positive: bool = True) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    positive = labels == 1.0
    return (positive | (labels == -1.0)) if uncertain_as_positive else positive


def _f1(tp, fp, fn, zero_division: float) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), zero_division)


def chexpert_f1(predicted: np.ndarray, reference: np.ndarray, *, zero_division: float = 0.0) -> dict:
    """{micro_f1_14, macro_f1_14, micro_f1_5, macro_f1_5, per_class_f1, n, rule} from [N, 14] label arrays."""
    predicted, reference = np.asarray(predicted), np.asarray(reference)
    if predicted.shape != reference.shape or predicted.ndim != 2 or predicted.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(
            f"chexpert_f1: predicted {predicted.shape} and reference {reference.shape} must both be "
            f"[N, {len(CHEXPERT_LABELS)}] in CheXpert train.csv column order"
        )
    p, r = binarise(predicted), binarise(reference)
    tp = (p & r).sum(0).astype(np.float64)
    fp = (p & ~r).sum(0).astype(np.float64)
    fn = (~p & r).sum(0).astype(np.float64)
    per_class = _f1(tp, fp, fn, zero_division)
    five = np.array([CHEXPERT_LABELS.index(c) for c in CHEXPERT5_LABELS])
    out = {"rule": RULE, "n": int(p.shape[0])}
    for name, idx in (("14", np.arange(len(CHEXPERT_LABELS))), ("5", five)):
        out[f"micro_f1_{name}"] = float(_f1(tp[idx].sum(), fp[idx].sum(), fn[idx].sum(), zero_division))
        out[f"macro_f1_{name}"] = float(per_class[idx].mean())
    out["per_class_f1"] = {c: float(per_class[i]) for i, c in enumerate(CHEXPERT_LABELS)}
    return out


def rule_chexpert_f1(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """chexpert_f1 of the rule-based labels of generated and reference reports, named as such."""
    if len(predictions) != len(references):
        raise ValueError(f"rule_chexpert_f1: {len(predictions)} predictions but {len(references)} references")
    out = chexpert_f1(chexpert_labels(list(predictions)), chexpert_labels(list(references)))
    out["labeler"] = "rule-CheXpert (dmx_jax.eval.chexpert_labeler), not CheXbert"
    return out
