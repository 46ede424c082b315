"""GRPO-family objective as pure functions over [B, T] arrays.

Variants are presets of GRPOConfig (a few lines of defaults each), not forks:
- grpo(): group-normalised advantages (mean and std), symmetric clip, k3 KL, seq-mean-token-mean.
- dr_grpo(): no std normalisation, sum-then-normalise by a constant length (Liu et al. 2025).
- dapo(): clip-higher (0.2 / 0.28), no KL, token-mean, dynamic sampling (drop zero-variance groups).

Every loss returns (numerator, denominator) so micro-batches and shards combine exactly.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4                 # G samples per prompt
    scale_by_std: bool = True           # False = Dr.GRPO advantages
    std_eps: float = 1e-6
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_coef: float = 0.01
    kl_estimator: str = "k3"
    loss_agg: str = "seq-mean-token-mean"
    norm_length: int = 0                # for seq-mean-token-sum-norm; 0 = completion length T
    num_iterations: int = 1             # mu: policy updates per rollout batch (pi_old = sampler)
    dynamic_sampling: bool = False      # DAPO: drop groups whose rewards all agree
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"grpo.kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_agg must be one of {AGGREGATIONS}, got {self.loss_agg!r}")
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size must be >= 2 (advantages are relative within a group), got {self.group_size}")

    @classmethod
    def grpo(cls, **kw) -> "GRPOConfig":
        return cls(**kw)

    @classmethod
    def dr_grpo(cls, **kw) -> "GRPOConfig":
        return cls(**{"scale_by_std": False, "loss_agg": "seq-mean-token-sum-norm", **kw})

    @classmethod
    def dapo(cls, **kw) -> "GRPOConfig":
        return cls(**{"eps_high": 0.28, "kl_coef": 0.0, "loss_agg": "token-mean", "dynamic_sampling": True, **kw})


def group_advantages(rewards: jax.Array, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6) -> jax.Array:
    """rewards [B*G] (groups contiguous) -> advantages [B*G]: (r - mean_g) / (std_g + eps), std unbiased."""
    r = rewards.reshape(-1, group_size).astype(jnp.float32)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        std = jnp.sqrt(jnp.sum(centred ** 2, axis=1, keepdims=True) / (group_size - 1))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def group_has_signal(rewards: jax.Array, group_size: int, tol: float = 1e-6) -> jax.Array:
    """[B*G] bool: the sample's group has non-identical rewards (DAPO dynamic-sampling filter)."""
    r = rewards.reshape(-1, group_size)
    keep = (r.max(axis=1) - r.min(axis=1)) > tol
    return jnp.repeat(keep, group_size)


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        return jnp.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(token_loss: jax.Array, mask: jax.Array, mode: str, norm_length: int = 0) -> tuple[jax.Array, jax.Array]:
    """(numerator, denominator) of the batch loss; loss = numerator / denominator."""
    mask = mask.astype(jnp.float32)
    per_seq_sum = jnp.sum(token_loss * mask, axis=1)
    n_seq = jnp.sum(jnp.any(mask > 0, axis=1).astype(jnp.float32))
    if mode == "token-mean":
        return jnp.sum(per_seq_sum), jnp.sum(mask)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq_sum / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        return jnp.sum(per_seq), n_seq
    if mode == "seq-mean-token-sum":
        return jnp.sum(per_seq_sum), n_seq
    if mode == "seq-mean-token-sum-norm":
        length = norm_length or token_loss.shape[1]
        return jnp.sum(per_seq_sum) / length, n_seq
    raise ValueError(f"unknown loss aggregation {mode!r}")


def policy_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, advantages: jax.Array,
                mask: jax.Array, cfg: GRPOConfig) -> tuple[jax.Array, jax.Array, dict]:
    """Clipped surrogate + KL. logp/old_logp/ref_logp/mask [B, T], advantages [B].

    Returns (numerator, denominator, metrics) with metric sums over masked tokens (divide by
    metrics['tokens'] for means).
    """
    mask = mask.astype(jnp.float32)
    adv = advantages[:, None].astype(jnp.float32)
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    pg = jnp.maximum(-adv * ratio, -adv * clipped)
    token_loss = pg
    metrics = {}
    if ref_logp is not None and cfg.kl_coef:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator)
        token_loss = token_loss + cfg.kl_coef * kl
        metrics["kl_sum"] = jnp.sum(kl * mask)
    num, den = aggregate(token_loss, mask, cfg.loss_agg, cfg.norm_length)
    metrics.update({
        "tokens": jnp.sum(mask),
        "clip_low_sum": jnp.sum(((ratio < 1.0 - cfg.eps_low) & (adv < 0)).astype(jnp.float32) * mask),
        "clip_high_sum": jnp.sum(((ratio > 1.0 + cfg.eps_high) & (adv > 0)).astype(jnp.float32) * mask),
        "ratio_sum": jnp.sum(ratio * mask),
    })
    return num, den, metrics
