"""Supervised fine-tuning objective (stages 1 and 2): next-token loss on answer tokens only.

Batch (all leaves batch-major, from data_pipelines.pipeline): input_ids, attention_mask, loss_mask [B, T],
positions [B, 3, T] (swapped to the model's [3, B, T] here), optional pixel_values [B, P, C*T*p*p] + vision_inputs
(leading B).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from dmx_jax.training.loss import cross_entropy_from_hidden, shift_targets


def sft_loss(model, batch: dict, rng=None, *, chunk_size: int = 0, per_row: bool = False):
    """(loss sum, count, {}): per_row=False weighs every answer token alike (count: tokens); per_row=True
    weighs every row alike, each row's tokens sharing a weight of 1 (count: rows with answer tokens), so a
    one-word VQA answer counts as much as a 70-token report. rng: the adapters' dropout key when the model's
    lora.dropout > 0 (None: no dropout)."""
    positions = jnp.swapaxes(batch["positions"], 0, 1)  # rows [B, 3, T] -> [3, B, T]
    dropout_key = rng if model.cfg.text.lora.dropout > 0 else None
    hidden, _ = model.hidden_states(
        batch["input_ids"],
        positions,
        batch["attention_mask"],
        batch.get("pixel_values"),
        batch.get("vision_inputs"),
        dropout_key=dropout_key,
    )
    targets, weights = shift_targets(batch["input_ids"], batch["loss_mask"])
    if per_row:
        weights = weights.astype(jnp.float32)
        weights = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)  # [B, T], rows sum to 1 (or 0)
    loss_sum, count = cross_entropy_from_hidden(hidden, model.head_kernel(), targets, weights, chunk_size=chunk_size)
    return loss_sum, count, {}


def make_sft_loss(chunk_size: int = 0, per_row: bool = False):
    return functools.partial(sft_loss, chunk_size=chunk_size, per_row=per_row)
