"""Grounding reward as array operations: cited boxes vs ground-truth boxes, greedy IoU matching.

Same matching as the evaluation (`dmx_jax.eval.grounding.greedy_match`): repeatedly take the unmatched
(cited, truth) pair with the highest IoU > 0 (ties: lower cited index, then lower truth index).
Returns per row precision and recall at IoU >= threshold, their F1, and the mean IoU of matched pairs
over max(#cited, #truth) (1.0 when both are empty, 0.0 when exactly one is).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """IoU [..., N, M] of boxes a [..., N, 4] and b [..., M, 4] (xyxy; inverted boxes have zero area)."""
    area = lambda x: jnp.clip(x[..., 2] - x[..., 0], 0) * jnp.clip(x[..., 3] - x[..., 1], 0)
    lo = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = jnp.prod(jnp.clip(hi - lo, 0), axis=-1)
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def greedy_pairs(iou: jax.Array) -> jax.Array:
    """Matched IoU per cited box [B, N] (0 where unmatched) by greedy matching of iou [B, N, M]."""
    b, n, m = iou.shape

    def body(_, carry):
        avail, matched = carry
        score = jnp.where(avail, iou, -1.0).reshape(b, -1)
        best = jnp.argmax(score, axis=1)  # first max in row-major order = lowest (i, j) on ties
        value = jnp.take_along_axis(score, best[:, None], axis=1)[:, 0]
        take = value > 0
        i, j = best // m, best % m
        matched = matched.at[jnp.arange(b), i].set(jnp.where(take, value, matched[jnp.arange(b), i]))
        hit_row = (jnp.arange(n)[None, :] == i[:, None]) & take[:, None]
        hit_col = (jnp.arange(m)[None, :] == j[:, None]) & take[:, None]
        avail = avail & ~hit_row[:, :, None] & ~hit_col[:, None, :]
        return avail, matched

    _, matched = jax.lax.fori_loop(0, min(n, m), body, (iou > 0, jnp.zeros((b, n), iou.dtype)))
    return matched


def grounding_reward(pred, pred_valid, truth, truth_valid, iou_threshold: float = 0.5) -> dict:
    """dict(precision, recall, f1, mean_iou) float32 [B] of cited boxes [B, N, 4] vs truth [B, M, 4]."""
    iou = box_iou(pred, truth) * (pred_valid[:, :, None] & truth_valid[:, None, :])
    matched = greedy_pairs(iou)
    n_pred = jnp.sum(pred_valid, axis=1).astype(jnp.float32)
    n_true = jnp.sum(truth_valid, axis=1).astype(jnp.float32)
    hits = jnp.sum(matched >= iou_threshold, axis=1).astype(jnp.float32)
    both_empty, one_empty = (n_pred == 0) & (n_true == 0), (n_pred == 0) != (n_true == 0)
    precision = jnp.where(n_pred > 0, hits / jnp.maximum(n_pred, 1), 0.0)
    recall = jnp.where(n_true > 0, hits / jnp.maximum(n_true, 1), 0.0)
    f1 = jnp.where(precision + recall > 0, 2 * precision * recall / jnp.maximum(precision + recall, 1e-30), 0.0)
    mean_iou = jnp.sum(matched, axis=1) / jnp.maximum(jnp.maximum(n_pred, n_true), 1)
    out = {"precision": precision, "recall": recall, "f1": f1, "mean_iou": mean_iou}
    return {k: jnp.where(both_empty, 1.0, jnp.where(one_empty, 0.0, v)).astype(jnp.float32) for k, v in out.items()}
