"""GRPO-family objective as pure functions over [B, T] arrays, with the names and defaults of EasyR1/verl.

Variants are presets of GRPOConfig (a few lines of defaults each), not forks:
- grpo(): group-normalised advantages (mean and unbiased std + 1e-6), clip 0.2 / 0.3 with dual-clip c = 3,
  k3 ("low_var_kl") KL loss, token-mean (EasyR1's defaults).
- dr_grpo(): no std normalisation, sum-then-normalise by a constant length (Liu et al. 2025).
- dapo(): clip-higher (0.2 / 0.28), no KL, token-mean, dynamic sampling (refill with groups that have signal),
  overlong filtering of truncated completions.

Every loss returns (numerator, denominator) so micro-batches, mini-batches and shards combine exactly.
Numerics follow EasyR1: the log-ratio is clamped to [-20, 20] before exp, k3 clamps its log-ratio to [-20, 20]
and its value to [-10, 10], so a masked token that overflows cannot turn the loss into NaN.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}      # EasyR1/verl names
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
OLD_LOGP_SOURCES = ("trainer", "sampler")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4                 # G samples per prompt (EasyR1 rollout.n)
    scale_by_std: bool = True           # False = Dr.GRPO advantages (verl norm_adv_by_std_in_grpo)
    std_eps: float = 1e-6
    clip_ratio_low: float = 0.2         # ratio clipped to [1 - low, 1 + high]
    clip_ratio_high: float = 0.3        # EasyR1 default (DAPO: 0.28)
    clip_ratio_dual: float = 3.0        # dual-clip constant c (advantage < 0: loss <= -A * c); 0 disables
    log_ratio_clamp: float = 20.0       # log pi/pi_old clamped before exp (EasyR1: 20)
    kl_coef: float = 0.01               # KL loss weight; 0 = no reference model
    kl_estimator: str = "k3"            # k1 | k2 | k3 | abs (aliases kl | mse | low_var_kl)
    kl_clamp: float = 10.0              # |k3| clamp (EasyR1: 10); 0 disables
    loss_agg: str = "token-mean"        # verl loss_agg_mode
    norm_length: int = 0                # for seq-mean-token-sum-norm; 0 = completion length T
    num_iterations: int = 1             # mu = ppo_epochs: passes over each rollout batch
    ppo_mini_batch_size: int = 0        # prompts (groups) per optimizer update, as verl; 0 = the whole batch
    old_logp: str = "trainer"           # pi_old: "trainer" recomputes (EasyR1) | "sampler" reuses rollout log-probs
    dynamic_sampling: bool = False      # DAPO: keep groups whose rewards differ, refill from further batches
    dynamic_sampling_max_tries: int = 3 # rollout batches per step at most (verl filter_groups.max_num_gen_batches)
    overlong_filtering: bool = False    # DAPO: truncated completions get no loss (still count for advantages)
    overlong_buffer_len: int = 0        # DAPO soft overlong penalty over the last L_cache tokens; 0 = off
    overlong_penalty_factor: float = 1.0
    temperature: float = 1.0            # sampling temperature; log-probs are of softmax(logits / T)
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    rollout_micro_batches: int = 1      # sequential slices of the rollout batch in the sampler
    logprob_micro_batches: int = 1      # sequential slices in the pi_old / reference log-prob passes

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS and self.kl_estimator not in KL_ALIASES:
            raise ValueError(f"grpo.kl_estimator must be one of {KL_ESTIMATORS + tuple(KL_ALIASES)}, "
                             f"got {self.kl_estimator!r}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_agg must be one of {AGGREGATIONS}, got {self.loss_agg!r}")
        if self.group_size < 2:
            raise ValueError("grpo.group_size must be >= 2 (advantages are relative within a group), "
                             f"got {self.group_size}")
        if self.old_logp not in OLD_LOGP_SOURCES:
            raise ValueError(f"grpo.old_logp must be one of {OLD_LOGP_SOURCES}, got {self.old_logp!r}")
        if self.clip_ratio_dual and self.clip_ratio_dual <= 1.0:
            raise ValueError(f"grpo.clip_ratio_dual must be > 1 (or 0 to disable), got {self.clip_ratio_dual}")
        for name in ("num_iterations", "dynamic_sampling_max_tries", "rollout_micro_batches", "logprob_micro_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")

    # the pre-2026-12 names, read-only
    eps_low = property(lambda self: self.clip_ratio_low)
    eps_high = property(lambda self: self.clip_ratio_high)

    @classmethod
    def grpo(cls, **kw) -> GRPOConfig:
        return cls(**kw)

    @classmethod
    def dr_grpo(cls, **kw) -> GRPOConfig:
        return cls(**{"scale_by_std": False, "loss_agg": "seq-mean-token-sum-norm", **kw})

    @classmethod
    def dapo(cls, **kw) -> GRPOConfig:
        return cls(**{"clip_ratio_high": 0.28, "kl_coef": 0.0, "loss_agg": "token-mean", "dynamic_sampling": True,
                      "overlong_filtering": True, **kw})


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


def overlong_penalty(lengths: jax.Array, max_len: int, buffer_len: int, factor: float) -> jax.Array:
    """DAPO's soft overlong punishment [B] (<= 0): 0 up to max_len - buffer_len tokens, then linear down to
    -factor at max_len (verl: min(-(L - (L_max - L_cache)) / L_cache * factor, 0))."""
    if buffer_len <= 0:
        return jnp.zeros(lengths.shape, jnp.float32)
    exceed = lengths.astype(jnp.float32) - (max_len - buffer_len)
    return jnp.minimum(-exceed / buffer_len * factor, 0.0)


def truncated_rows(tokens: jax.Array, mask: jax.Array, stop_token_ids=()) -> jax.Array:
    """[B] bool: the completion used every slot and its last token is not a stop token (cut by max_new_tokens)."""
    full = mask[:, -1] > 0
    if not stop_token_ids:
        return full
    return full & ~jnp.isin(tokens[:, -1], jnp.asarray(stop_token_ids, tokens.dtype))


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, estimator: str, clamp: float = 10.0) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3, EasyR1's abs).

    k3 clamps its log-ratio to [-20, 20] and its value to [-clamp, clamp] as EasyR1/verl do."""
    estimator = KL_ALIASES.get(estimator, estimator)
    log_ratio = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    if estimator == "k1":
        return -log_ratio
    if estimator == "abs":
        return jnp.abs(log_ratio)
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        lr = jnp.clip(log_ratio, -20.0, 20.0)
        k3 = jnp.exp(lr) - lr - 1.0
        return jnp.clip(k3, -clamp, clamp) if clamp else k3
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(token_loss: jax.Array, mask: jax.Array, mode: str, norm_length: int = 0) -> tuple[jax.Array, jax.Array]:
    """(numerator, denominator) of the batch loss; loss = numerator / denominator.

    seq-* modes count only rows with at least one unmasked token, so rows masked out whole (dynamic sampling,
    overlong filtering) do not dilute the mean; seq-mean-token-sum-norm divides each row's sum by a constant
    length and averages over rows (verl divides the batch sum by the length without the row mean)."""
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


def clipped_surrogate(logp: jax.Array, old_logp: jax.Array, adv: jax.Array, cfg: GRPOConfig) -> tuple[jax.Array, dict]:
    """Per-token PPO loss with asymmetric and dual clip, [B, T] each (adv broadcast to [B, T]).

    Returns (loss [B, T], per-token indicator arrays for clip_low / clip_high / clip_dual and ratio)."""
    log_ratio = (logp - old_logp).astype(jnp.float32)
    lr = jnp.clip(log_ratio, -cfg.log_ratio_clamp, cfg.log_ratio_clamp)
    ratio = jnp.exp(lr)
    clipped = jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)
    pg1, pg2 = -adv * ratio, -adv * clipped
    pg = jnp.maximum(pg1, pg2)
    ind = {"clip_low": (pg1 < pg2) & (adv < 0), "clip_high": (pg1 < pg2) & (adv > 0)}
    if cfg.clip_ratio_dual:
        pg3 = -adv * cfg.clip_ratio_dual
        ind["clip_dual"] = (pg > pg3) & (adv < 0)
        pg = jnp.where(adv < 0, jnp.minimum(pg, pg3), pg)
    else:
        ind["clip_dual"] = jnp.zeros_like(ind["clip_low"])
    return pg, {**ind, "ratio": ratio, "approx_kl": -log_ratio}


def policy_loss(logp: jax.Array, old_logp: jax.Array, ref_logp: jax.Array | None, advantages: jax.Array,
                mask: jax.Array, cfg: GRPOConfig) -> tuple[jax.Array, jax.Array, dict]:
    """Clipped surrogate + KL. logp/old_logp/ref_logp/mask [B, T], advantages [B].

    Returns (numerator, denominator, metrics) with metric sums over masked tokens (divide by
    metrics['tokens'] for means): clip fractions low / high / dual, ratio, approx_kl (old vs new, verl ppo_kl), kl.
    """
    mask = mask.astype(jnp.float32)
    adv = jnp.broadcast_to(advantages[:, None].astype(jnp.float32), logp.shape)
    token_loss, ind = clipped_surrogate(logp, old_logp, adv, cfg)
    metrics = {}
    if ref_logp is not None and cfg.kl_coef:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp)
        token_loss = token_loss + cfg.kl_coef * kl
        metrics["kl_sum"] = jnp.sum(kl * mask)
    num, den = aggregate(token_loss, mask, cfg.loss_agg, cfg.norm_length)
    metrics["tokens"] = jnp.sum(mask)
    for k, v in ind.items():
        metrics[f"{k}_sum"] = jnp.sum(jax.lax.stop_gradient(v.astype(jnp.float32)) * mask)
    return num, den, metrics


def mini_batch_rows(num_rows: int, cfg: GRPOConfig) -> int:
    """Rows per optimizer update (groups kept whole); the rollout batch when ppo_mini_batch_size is 0."""
    rows = cfg.ppo_mini_batch_size * cfg.group_size if cfg.ppo_mini_batch_size else num_rows
    if num_rows % rows:
        raise ValueError(f"rollout batch of {num_rows} rows does not split into mini-batches of "
                         f"{cfg.ppo_mini_batch_size} prompts x G={cfg.group_size} = {rows} rows")
    return rows

