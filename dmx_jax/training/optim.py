"""Optimizer: AdamW with warmup + cosine/constant schedule, global-norm clipping, decay mask."""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import optax

from dmx_jax.sharding.rules import path_to_str


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    total_steps: int = 1000
    schedule: Literal["cosine", "constant"] = "cosine"
    end_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0           # <= 0 disables clipping
    grad_accum: int = 1              # micro-batches per step (the step splits the batch)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1)),
             optax.constant_schedule(cfg.learning_rate)],
            [max(cfg.warmup_steps, 1)]) if cfg.warmup_steps else optax.constant_schedule(cfg.learning_rate)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.total_steps, cfg.warmup_steps + 1),
            end_value=cfg.learning_rate * cfg.end_lr_fraction)
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")


def _decay_mask(params):
    """Decay matrices only: no decay on norm scales and biases."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not path_to_str(p).endswith((".scale", ".bias")), params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
    return optax.chain(*parts)
