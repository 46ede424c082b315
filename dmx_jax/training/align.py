"""Alignment stage: the vision tower and merger learn to see before SFT (a stand-in for the base model's
vision-language pretraining, which a from-scratch miniature lacks).

The merged image features of each row (what the decoder later reads at the image tokens) go through a pooled
linear head: pooled = [mean f, mean f * x, mean f * y, 1] over the row's image units (x, y in [-1, 1]: the unit's
column / row), so a linear read-out can say *where* as well as *what*. Targets per study
(data_pipelines.synthetic.align): the 14 CheXpert labels (BCE), per finding its presence in the image's left /
right half (BCE) and its box in [0, 1] coordinates (L1, only for present findings).

Use with the project's train step (the trained pytree holds only the tower, the merger and the head):
    amodel = AlignModel(model, rngs)                   # shares model.vision
    graphdef, state = nnx.split(amodel); params = nnx.to_pure_dict(state)
    tx = align_optimizer(OptimConfig(...), head_lr=...)
    step = make_train_step(graphdef, make_align_loss(), tx)
    ... train on batches of data_pipelines.pipeline.align.align_rows(examples, ...) (stack with stack_align_rows) ...
    full_params = merge_vision(full_params, params)    # the stage's result for SFT
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmx_jax.eval.chexpert_labeler import CHEXPERT_LABELS
from dmx_jax.model.qwen2_5_vl import Qwen25VL, merge_image_features_rowwise
from dmx_jax.training.optim import OptimConfig, make_optimizer

N_LABELS = 14
N_OUT = N_LABELS * (1 + 2 + 4)  # labels, sides (left, right), boxes (x0, y0, x1, y1)


class AlignModel(nnx.Module):
    """The vision tower + merger of a Qwen25VL (shared, not copied) and a linear head (`lm_head`, [3D + 1, 98])
    on moment-pooled features. Params: {"vision": the model's tower + merger, "lm_head": {"kernel"}}.

    decoder_readout=True also runs the text decoder (shared) over each row's prompt (image tokens, then a
    question) and reads the same targets from its final hidden state at the last prompt position (where the
    answer starts) through `align_readout` [D, 98]: the decoder learns to gather what the image shows into the
    text positions, with 98 targets per row instead of SFT's one answer token. Params then add "text"."""

    def __init__(self, model: Qwen25VL, rngs: nnx.Rngs, decoder_readout: bool = False):
        self.cfg = model.cfg
        self.vision = model.vision
        d = model.cfg.vision.out_hidden_size
        # named like the LM head so the sharding rule table knows it; the bias is the last input row
        self.lm_head = nnx.Linear(
            3 * d + 1, N_OUT, use_bias=False, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
        )
        self.decoder_readout = decoder_readout
        if decoder_readout:
            self.text = model.text
            self.align_readout = nnx.Linear(
                model.cfg.text.hidden_size, N_OUT, use_bias=True, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
            )

    @property
    def dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def features(self, pixel_values: jax.Array, vin: dict) -> jax.Array:
        """pixel_values [B, P, F], vision_inputs (leading B) -> merged features [B, U, D], as the decoder gets them."""
        return jax.vmap(lambda pv, v: Qwen25VL.encode_images(self, pv, v))(pixel_values, vin)

    def __call__(self, batch: dict) -> jax.Array:
        """-> outputs [B, N_OUT]: 14 label logits, 28 side logits ([14, 2]), 56 box values ([14, 4]); with
        decoder_readout, (pooled-head outputs, decoder read-out outputs)."""
        feats = self.features(batch["pixel_values"], batch["vision_inputs"])  # [B, U, D]
        pooled_out = self._pooled_head(feats.astype(jnp.float32), batch)
        if not self.decoder_readout:
            return pooled_out

        ids = batch["input_ids"]
        x = merge_image_features_rowwise(self.text.embed_tokens(ids, self.dtype), ids, feats, self.cfg.image_token_id)
        positions = jnp.swapaxes(batch["positions"], 0, 1)  # [3, B, T]
        c = self.cfg
        h, _ = self.text(x, positions, batch["attention_mask"], None, c.remat, c.attention, c.attention_block)
        return pooled_out, self.align_readout(h[:, -1].astype(jnp.float32))  # left-padded: last = answer start

    def _pooled_head(self, f: jax.Array, batch: dict) -> jax.Array:
        m = batch["unit_mask"].astype(jnp.float32)[..., None]  # [B, U, 1]
        n = jnp.maximum(m.sum(1), 1.0)  # [B, 1]
        xy = batch["unit_xy"].astype(jnp.float32)  # [B, U, 2]
        pooled = jnp.concatenate(
            [(f * m).sum(1) / n, (f * m * xy[..., :1]).sum(1) / n, (f * m * xy[..., 1:]).sum(1) / n, jnp.ones_like(n)],
            axis=-1,
        )  # [B, 3D + 1]
        return self.lm_head(pooled)


def split_outputs(out: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, N_OUT] -> label logits [B, 14], side logits [B, 14, 2], boxes [B, 14, 4] (sigmoid, in [0, 1])."""
    b = out.shape[0]
    labels = out[:, :N_LABELS]
    sides = out[:, N_LABELS : 3 * N_LABELS].reshape(b, N_LABELS, 2)
    boxes = jax.nn.sigmoid(out[:, 3 * N_LABELS :].reshape(b, N_LABELS, 4))
    return labels, sides, boxes


def align_loss(model: AlignModel, batch: dict, rng=None, *, side_weight: float = 1.0, box_weight: float = 1.0):
    """(sum over rows of label BCE + side_weight * side BCE + box_weight * box L1, rows, aux) for make_train_step.

    Label BCE is the mean over the 14 labels; side BCE and box L1 are means over the present findings only
    (0 for a row without findings): an absent finding has no side, and its all-zero side target would teach the
    head to answer "neither half" for every finding. Rows with row_mask 0 (batch padding) count nothing."""
    out = model(batch)
    if isinstance(out, tuple):  # decoder read-out: both heads learn the same targets
        (s0, r0, a0), (s1, _, a1) = (_align_terms(o, batch, side_weight, box_weight) for o in out)
        return s0 + s1, r0, {**a0, **{k.replace("align/", "align/decoder_"): v for k, v in a1.items()}}
    return _align_terms(out, batch, side_weight, box_weight)


def _align_terms(out: jax.Array, batch: dict, side_weight: float, box_weight: float):
    labels, sides, boxes = split_outputs(out)
    w = batch.get("row_mask", jnp.ones(labels.shape[0], jnp.float32)).astype(jnp.float32)  # [B]
    label_bce = optax.sigmoid_binary_cross_entropy(labels, batch["labels"]).mean(-1)  # [B]
    bm = batch["box_mask"]  # [B, 14]
    side_bce = optax.sigmoid_binary_cross_entropy(sides, batch["sides"]).mean(-1)  # [B, 14]
    side_bce = (side_bce * bm).sum(-1) / jnp.maximum(bm.sum(-1), 1.0)  # [B]
    box_l1 = (jnp.abs(boxes - batch["boxes"]).mean(-1) * bm).sum(-1) / jnp.maximum(bm.sum(-1), 1.0)
    per_row = label_bce + side_weight * side_bce + box_weight * box_l1
    rows = w.sum()
    rows_with_findings = jnp.maximum((bm.sum(-1) > 0).astype(jnp.float32) @ w, 1.0)
    aux = {
        "align/label_bce": (label_bce * w).sum() / jnp.maximum(rows, 1.0),
        "align/side_bce": (side_bce * w).sum() / rows_with_findings,
        "align/box_l1": (box_l1 * w).sum() / rows_with_findings,
    }
    return (per_row * w).sum(), rows, aux


def make_align_loss(side_weight: float = 1.0, box_weight: float = 1.0):
    return functools.partial(align_loss, side_weight=side_weight, box_weight=box_weight)


def align_optimizer(cfg: OptimConfig, head_lr: float | None = None) -> optax.GradientTransformation:
    """AdamW (cfg) for the tower and merger (params["vision"]), the head (params["lm_head"]) at its own learning
    rate (default: cfg's)."""
    return make_optimizer(cfg, lr_by_prefix={} if head_lr is None else {"lm_head": head_lr})


def merge_vision(full_params: dict, align_params: dict) -> dict:
    """The full model's params with the tower + merger (and the decoder, when the stage trained it) taken from
    the alignment stage's params."""
    return {**full_params, **{k: align_params[k] for k in ("vision", "text") if k in align_params}}


def stack_align_rows(rows: Sequence[dict]) -> dict:
    """Rows -> one batch dict (every leaf batch-major, vision_inputs included)."""
    out = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "vision_inputs"}
    out["vision_inputs"] = {k: np.stack([r["vision_inputs"][k] for r in rows]) for k in rows[0]["vision_inputs"]}
    return out


def align_metrics(graphdef, params, batch: dict) -> dict:
    """Held-out read-outs of the head: per-label accuracy at 0 logit (mean over 14; mostly negatives, so
    all-negative scores ~0.88), mean ROC AUC over labels with both classes and each label's AUC by CheXpert name
    (which findings the tower sees), side accuracy over present findings, box L1 over present findings."""
    out = nnx.merge(graphdef, params)(jax.tree.map(jnp.asarray, batch))
    if isinstance(out, tuple):
        pooled = _head_metrics(out[0], batch)
        return {**pooled, **{f"decoder_{k}": v for k, v in _head_metrics(out[1], batch).items()}}
    return _head_metrics(out, batch)


def label_auc(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-column ROC AUC of scores [N, L] against binary truth [N, L] (ties count half; NaN for a column
    with one class): the Mann-Whitney statistic from average ranks."""
    out = np.full(scores.shape[1], np.nan)
    for k in range(scores.shape[1]):
        y = truth[:, k] > 0.5
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        if n_pos and n_neg:
            order = np.argsort(scores[:, k], kind="stable")
            ranks = np.empty(len(y))
            ranks[order] = np.arange(1, len(y) + 1)
            for v in np.unique(scores[:, k]):  # average ranks over ties
                tie = scores[:, k] == v
                ranks[tie] = ranks[tie].mean()
            out[k] = (ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _head_metrics(out, batch: dict) -> dict:
    labels, sides, boxes = (np.asarray(a) for a in split_outputs(out))
    bm = batch["box_mask"] > 0
    side_ok = ((sides > 0) == (batch["sides"] > 0.5)).all(-1)
    auc = label_auc(labels, batch["labels"])
    return {
        "label_acc": float(((labels > 0) == (batch["labels"] > 0.5)).mean()),
        "label_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
        "label_auc_by_finding": {name: float(a) for name, a in zip(CHEXPERT_LABELS, auc) if np.isfinite(a)},
        "side_acc": float(side_ok[bm].mean()) if bm.any() else float("nan"),
        "box_l1": float(np.abs(boxes - batch["boxes"]).mean(-1)[bm].mean()) if bm.any() else float("nan"),
    }
