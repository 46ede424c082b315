"""Grounding scores between predicted and reference boxes (pixel xyxy, same image frame).

Per sample (a phrase / question with one or more reference boxes):
- top1_iou: IoU of the FIRST predicted box with the reference box it overlaps most (0 without prediction);
- acc_at_0_5: 1 if top1_iou >= 0.5 (the usual referring-expression accuracy);
- miou: greedy one-to-one matching (repeatedly pair the unmatched predicted / reference boxes with the
  highest IoU > 0), then the sum of matched IoUs / max(#predicted, #reference), so missing and extra
  boxes count as 0;
- f1_at_0_5: F1 of the matched pairs with IoU >= 0.5 (precision over predicted, recall over reference).
A sample with no reference and no predicted box scores 1 everywhere; no reference but some prediction
scores 0. Areas are (x_max - x_min) * (y_max - y_min) with widths clipped at 0 (continuous coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmx_jax.eval.bootstrap import grouped_summaries, summarise

RULE = (
    "top1_iou / acc_at_0_5: first predicted box vs its best-overlapping reference box (IoU >= 0.5); "
    "miou: greedy max-IoU one-to-one matching, matched IoU sum / max(#pred, #ref); f1_at_0_5: F1 of matched "
    "pairs with IoU >= 0.5; boxes pixel xyxy, area without +1"
)
METRICS = ("top1_iou", "acc_at_0_5", "miou", "f1_at_0_5")


def as_boxes(boxes, where: str) -> np.ndarray:
    """[K, 4] float64 from a list of 4-sequences / array; ValueError naming `where` otherwise."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{where}: expected finite boxes of shape [K, 4] (x_min, y_min, x_max, y_max), got shape {arr.shape}"
        )
    return arr


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [K, M] of boxes a [K, 4] and b [M, 4]."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: np.ndarray) -> list[tuple[int, int, float]]:
    """(pred index, ref index, IoU) pairs, highest IoU first; ties broken by lower pred then ref index."""
    k, m = iou.shape
    order = sorted((-iou[i, j], i, j) for i in range(k) for j in range(m) if iou[i, j] > 0)
    used_p, used_r, pairs = set(), set(), []
    for neg, i, j in order:
        if i not in used_p and j not in used_r:
            used_p.add(i)
            used_r.add(j)
            pairs.append((i, j, -neg))
    return pairs


def grounding_sample_scores(predicted, reference) -> dict[str, float]:
    pred, ref = as_boxes(predicted, "predicted boxes"), as_boxes(reference, "reference boxes")
    if len(ref) == 0:
        value = 1.0 if len(pred) == 0 else 0.0
        return dict.fromkeys(METRICS, value)
    if np.any(ref[:, 2:] < ref[:, :2]):
        raise ValueError(f"reference boxes: x_max < x_min or y_max < y_min in {ref.tolist()}")
    if len(pred) == 0:
        return dict.fromkeys(METRICS, 0.0)
    iou = box_iou(pred, ref)
    top1 = float(iou[0].max())
    pairs = greedy_match(iou)
    hits = sum(1 for _, _, v in pairs if v >= 0.5)
    return {
        "top1_iou": top1,
        "acc_at_0_5": float(top1 >= 0.5),
        "miou": sum(v for _, _, v in pairs) / max(len(pred), len(ref)),
        "f1_at_0_5": 2 * hits / (len(pred) + len(ref)),
    }


def grounding_scores(
    predicted: Sequence,
    reference: Sequence,
    *,
    datasets: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """{"rule", "overall": {metric: summary}, "by_dataset": {ds: {metric: {group: summary}}}, "per_sample"}.

    predicted / reference: per sample a [K, 4] box list. groups: e.g. the finding class of each phrase.
    Every summary is {"mean", "ci": [lo, hi] (95% bootstrap over samples), "n"}.
    """
    if len(predicted) != len(reference):
        raise ValueError(f"grounding_scores: {len(predicted)} predictions but {len(reference)} references")
    n = len(reference)
    datasets = list(datasets) if datasets is not None else ["all"] * n
    groups = list(groups) if groups is not None else ["all"] * n
    if len(datasets) != n or len(groups) != n:
        raise ValueError(f"grounding_scores: {n} samples but {len(datasets)} datasets / {len(groups)} groups")
    rows = []
    for i, (p, r) in enumerate(zip(predicted, reference)):
        try:
            rows.append(grounding_sample_scores(p, r))
        except ValueError as e:
            raise ValueError(f"grounding_scores: sample {i}: {e}") from None
    per_sample = {k: np.array([row[k] for row in rows], dtype=np.float64) for k in METRICS}
    by_dataset = {}
    for ds in dict.fromkeys(datasets):
        mask = np.array([d == ds for d in datasets])
        keys = [g for g, m in zip(groups, mask) if m]
        by_dataset[ds] = {k: grouped_summaries(v[mask], keys, n_bootstrap, seed) for k, v in per_sample.items()}
    return {
        "rule": RULE,
        "overall": {k: summarise(v, n_bootstrap, seed) for k, v in per_sample.items()},
        "by_dataset": by_dataset,
        "per_sample": per_sample,
    }
