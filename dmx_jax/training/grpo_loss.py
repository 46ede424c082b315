"""GRPO-family objective as pure functions over [B, T] arrays, with the names and defaults of EasyR1/verl.

Variants are configuration, not forks, named as verl names them:
- `adv_estimator`: grpo (group mean and unbiased std), rloo (leave-one-out mean), reinforce_plus_plus (discounted
  token returns whitened over the batch);
- `loss_mode`: vanilla (PPO clip with dual clip), gspo (sequence-level ratio), cispo (clipped, stop-gradient IS
  weight on the log-prob);
- KL in the loss (`kl_coef`) and/or in the reward (`kl_reward_coef`, fixed or adaptive: `kl_ctrl`, its coefficient
  carried in the train state's `aux`), an entropy bonus (`entropy_coeff`), truncated
  importance sampling of the sampler-trainer mismatch (`tis_cap`).
Presets are a few lines of defaults each:
- grpo(): group-normalised advantages (mean and unbiased std + 1e-6), clip 0.2 / 0.3 with dual-clip c = 3,
  k3 ("low_var_kl") KL loss, token-mean (EasyR1's defaults).
- dr_grpo(): no std normalisation, sum-then-normalise by a constant length (Liu et al. 2025).
- dapo(): clip-higher (0.2 / 0.28), no KL, token-mean, dynamic sampling (refill with groups that have signal),
  overlong filtering of truncated completions.
- gspo(): sequence-level ratio clipped to [1 - 3e-4, 1 + 4e-4], seq-mean-token-mean, no KL (GSPO paper v2, 5.1).

Every loss returns (numerator, denominator) so micro-batches, mini-batches and shards combine exactly.
Numerics follow EasyR1: the log-ratio is clamped to [-20, 20] before exp, k3 clamps its log-ratio to [-20, 20]
and its value to [-10, 10], so a masked token that overflows cannot turn the loss into NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}  # EasyR1/verl names
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
OLD_LOGP_SOURCES = ("trainer", "sampler", "current")
ADV_ESTIMATORS = ("grpo", "rloo", "reinforce_plus_plus")
LOSS_MODES = ("vanilla", "gspo", "cispo")
KL_CONTROLLERS = ("fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    group_size: int = 4  # G samples per prompt (EasyR1 rollout.n)
    scale_by_std: bool = True  # False = Dr.GRPO advantages (verl norm_adv_by_std_in_grpo)
    std_eps: float = 1e-6
    clip_ratio_low: float = 0.2  # ratio clipped to [1 - low, 1 + high]
    clip_ratio_high: float = 0.3  # EasyR1 default (DAPO: 0.28)
    clip_ratio_dual: float = 3.0  # dual-clip constant c (advantage < 0: loss <= -A * c); 0 disables
    log_ratio_clamp: float = 20.0  # log pi/pi_old clamped before exp (EasyR1: 20)
    kl_coef: float = 0.01  # KL loss weight; 0 = no reference model
    kl_estimator: str = "k3"  # k1 | k2 | k3 | abs (aliases kl | mse | low_var_kl)
    kl_clamp: float = 10.0  # |k3| clamp (EasyR1: 10); 0 disables
    loss_agg: str = "token-mean"  # verl loss_agg_mode
    norm_length: int = 0  # for seq-mean-token-sum-norm; 0 = completion length T
    num_iterations: int = 1  # mu = ppo_epochs: passes over each rollout batch
    ppo_mini_batch_size: int = 0  # prompts (groups) per optimizer update, as verl; 0 = the whole batch
    old_logp: str = "trainer"  # pi_old: "trainer" recomputes (EasyR1) | "sampler" reuses rollout log-probs
    # | "current": stop_gradient of the update's own log-probs, no pi_old pass
    # (exact only on-policy: num_iterations 1, one mini-batch; verl's shortcut)
    adv_estimator: str = "grpo"  # grpo | rloo | reinforce_plus_plus (verl algorithm.adv_estimator)
    gamma: float = 1.0  # reinforce_plus_plus discount (verl algorithm.gamma)
    loss_mode: str = "vanilla"  # vanilla | gspo | cispo (verl actor.policy_loss.loss_mode)
    entropy_coeff: float = 0.0  # entropy bonus: loss - coeff * entropy, aggregated as the loss
    kl_reward_coef: float = 0.0  # KL(pi_old || ref) per token subtracted from the reward (verl use_kl_in_reward)
    kl_reward_estimator: str = "k1"  # verl algorithm.kl_penalty ("kl")
    kl_ctrl: str = "fixed"  # fixed | adaptive: the in-reward coefficient (verl algorithm.kl_ctrl.type)
    kl_target: float = 0.1  # adaptive: the KL the coefficient steers toward (kl_ctrl.target_kl)
    kl_horizon: int = 10_000  # adaptive: rows over which an error moves it by up to 20% (kl_ctrl.horizon)
    tis_cap: float = 0.0  # truncated IS: token losses x min(pi_old / pi_sampler, cap); 0 = off
    dynamic_sampling: bool = False  # DAPO: keep groups whose rewards differ, refill from further batches
    dynamic_sampling_max_tries: int = 3  # rollout batches per step at most (verl filter_groups.max_num_gen_batches)
    overlong_filtering: bool = False  # DAPO: truncated completions get no loss (still count for advantages)
    overlong_buffer_len: int = 0  # DAPO soft overlong penalty over the last L_cache tokens; 0 = off
    overlong_penalty_factor: float = 1.0
    temperature: float = 1.0  # sampling temperature; log-probs are of softmax(logits / T)
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    rollout_micro_batches: int = 1  # sequential slices of the rollout batch in the sampler
    logprob_micro_batches: int = 1  # sequential slices in the pi_old / reference log-prob passes
    # log-prob passes and updates run on the completion slots cut to the smallest of `length_buckets` equal steps
    # of max_new_tokens that holds the batch's longest completion (each length compiles once); 1: never cut
    length_buckets: int = 1

    def __post_init__(self):
        for name in ("kl_estimator", "kl_reward_estimator"):
            if getattr(self, name) not in KL_ESTIMATORS and getattr(self, name) not in KL_ALIASES:
                raise ValueError(
                    f"grpo.{name} must be one of {KL_ESTIMATORS + tuple(KL_ALIASES)}, got {getattr(self, name)!r}"
                )
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"grpo.loss_agg must be one of {AGGREGATIONS}, got {self.loss_agg!r}")
        if self.group_size < 2:
            raise ValueError(
                f"grpo.group_size must be >= 2 (advantages are relative within a group), got {self.group_size}"
            )
        for name, allowed in (
            ("old_logp", OLD_LOGP_SOURCES),
            ("adv_estimator", ADV_ESTIMATORS),
            ("loss_mode", LOSS_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"grpo.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.loss_mode == "gspo" and self.loss_agg != "seq-mean-token-mean":
            raise ValueError(
                "grpo.loss_mode='gspo' averages its sequence-level ratio per row: it needs "
                f"loss_agg='seq-mean-token-mean', got {self.loss_agg!r} (GRPOConfig.gspo() sets both)"
            )
        if self.old_logp == "current" and self.num_iterations != 1:
            raise ValueError(
                "grpo.old_logp='current' (no pi_old pass) is exact only on-policy: it needs "
                f"num_iterations=1, got {self.num_iterations}"
            )
        if self.kl_ctrl not in KL_CONTROLLERS:
            raise ValueError(f"grpo.kl_ctrl must be one of {KL_CONTROLLERS}, got {self.kl_ctrl!r}")
        if self.kl_ctrl == "adaptive" and not (self.kl_reward_coef > 0 and self.kl_target > 0 and self.kl_horizon > 0):
            raise ValueError(
                "grpo.kl_ctrl='adaptive' steers the in-reward KL coefficient: it needs kl_reward_coef > 0 "
                f"(the initial value), kl_target > 0 and kl_horizon > 0, got {self.kl_reward_coef}, "
                f"{self.kl_target}, {self.kl_horizon}"
            )
        if self.old_logp == "current" and self.kl_reward_coef:
            raise ValueError(
                "grpo.kl_reward_coef > 0 reads pi_old before the update: use old_logp='trainer' "
                "or 'sampler', not 'current'"
            )
        if not self.temperature > 0:
            raise ValueError(
                f"grpo.temperature must be > 0 (log-probs are of softmax(logits / T)), got {self.temperature}"
            )
        if not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError(f"grpo.top_p must be in (0, 1] and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}")
        for name in ("entropy_coeff", "kl_coef", "kl_reward_coef", "tis_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"grpo.{name} must be >= 0, got {getattr(self, name)}")
        if self.tis_cap and self.tis_cap < 1.0:
            raise ValueError(f"grpo.tis_cap must be >= 1 (a cap on pi_old / pi_sampler) or 0 (off), got {self.tis_cap}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"grpo.gamma must be in (0, 1], got {self.gamma}")
        if not 1 <= self.length_buckets <= self.max_new_tokens:
            raise ValueError(
                f"grpo.length_buckets must be in [1, max_new_tokens={self.max_new_tokens}], got {self.length_buckets}"
            )
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
        return cls(
            **{
                "clip_ratio_high": 0.28,
                "kl_coef": 0.0,
                "loss_agg": "token-mean",
                "dynamic_sampling": True,
                "overlong_filtering": True,
                **kw,
            }
        )

    @classmethod
    def gspo(cls, **kw) -> GRPOConfig:
        return cls(
            **{
                "loss_mode": "gspo",
                "loss_agg": "seq-mean-token-mean",
                "clip_ratio_low": 3e-4,
                "clip_ratio_high": 4e-4,
                "clip_ratio_dual": 0.0,
                "kl_coef": 0.0,
                **kw,
            }
        )

    @property
    def needs_reference(self) -> bool:
        """A reference model's log-probs enter the loss or the reward."""
        return bool(self.kl_coef or self.kl_reward_coef)


def group_advantages(rewards: jax.Array, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6) -> jax.Array:
    """rewards [B*G] (groups contiguous) -> advantages [B*G]: (r - mean_g) / (std_g + eps), std unbiased."""
    r = rewards.reshape(-1, group_size).astype(jnp.float32)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        std = jnp.sqrt(jnp.sum(centred**2, axis=1, keepdims=True) / (group_size - 1))
        centred = centred / (std + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """rewards [B*G] -> r_i - mean of the other G - 1 rewards of its group (RLOO, verl compute_rloo_outcome_advantage:
    G / (G - 1) * (r_i - group mean))."""
    r = rewards.reshape(-1, group_size).astype(jnp.float32)
    return (group_size / (group_size - 1) * (r - r.mean(axis=1, keepdims=True))).reshape(-1)


def masked_whiten(x: jax.Array, mask: jax.Array) -> jax.Array:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, var Bessel-corrected (verl masked_whiten)."""
    mask = mask.astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / jnp.maximum(n - 1.0, 1.0)
    return (x - mean) * jax.lax.rsqrt(var + 1e-8)


def discounted_returns(token_rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """[B, T] -> returns[t] = r_t + gamma * returns[t + 1], the running return reset where mask is 0 (verl
    compute_reinforce_plus_plus_outcome_advantage)."""

    def back(running, xs):
        r, m = xs
        ret = r + gamma * running
        return ret * m, ret

    _, rets = jax.lax.scan(
        back,
        jnp.zeros(token_rewards.shape[0], jnp.float32),
        (token_rewards.T.astype(jnp.float32), mask.T.astype(jnp.float32)),
        reverse=True,
    )
    return rets.T


def outcome_at_last_token(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] sequence scores -> [B, T] token rewards: each score on its row's last completion token (verl's reward
    managers), nothing on rows without tokens."""
    lengths = mask.astype(jnp.int32).sum(axis=1)
    last = jax.nn.one_hot(jnp.maximum(lengths - 1, 0), mask.shape[1], dtype=jnp.float32)
    return last * (scores.astype(jnp.float32) * (lengths > 0))[:, None]


def compute_advantages(
    scores: jax.Array, mask: jax.Array, cfg: GRPOConfig, token_rewards: jax.Array | None = None
) -> jax.Array:
    """Advantages [B, T] (zero off the mask) of `cfg.adv_estimator` from sequence scores [B] (groups contiguous)
    and optional per-token rewards [B, T] (the KL-in-reward terms). Outcome estimators (grpo, rloo) score a row
    by its total reward, scores + sum of its token rewards, as verl sums token_level_rewards."""
    mask = mask.astype(jnp.float32)
    if cfg.adv_estimator == "reinforce_plus_plus":
        rewards = outcome_at_last_token(scores, mask)
        if token_rewards is not None:
            rewards = rewards + token_rewards * mask
        return masked_whiten(discounted_returns(rewards, mask, cfg.gamma), mask) * mask
    total = scores.astype(jnp.float32)
    if token_rewards is not None:
        total = total + jnp.sum(token_rewards * mask, axis=1)
    if cfg.adv_estimator == "rloo":
        adv = rloo_advantages(total, cfg.group_size)
    else:
        adv = group_advantages(total, cfg.group_size, scale_by_std=cfg.scale_by_std, eps=cfg.std_eps)
    return adv[:, None] * mask


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


def adaptive_kl_coef(coef: float, current_kl: float, n_rows: int, target: float, horizon: int) -> float:
    """The in-reward KL coefficient after one rollout batch (Ziegler et al. 2019; verl AdaptiveKLController):
    the relative error of the batch's mean KL against `target`, clipped to +-0.2, moves the coefficient by
    error x n_rows / horizon."""
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_rows / horizon)


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
        return 0.5 * log_ratio**2
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


def sequence_surrogate(
    logp: jax.Array, old_logp: jax.Array, adv: jax.Array, mask: jax.Array, cfg: GRPOConfig
) -> tuple[jax.Array, dict]:
    """GSPO (verl compute_policy_loss_gspo): the row's length-normalised log-ratio s_i, applied per token as
    sg(s_i) * pi / sg(pi) (log-ratio clamped above at 10), clipped to [1 - low, 1 + high], no dual clip."""
    log_ratio = (logp - old_logp).astype(jnp.float32)
    lengths = jnp.maximum(mask.sum(axis=1), 1.0)
    seq = jnp.sum(log_ratio * mask, axis=1) / lengths
    lp = logp.astype(jnp.float32)
    log_s = lp - jax.lax.stop_gradient(lp) + jax.lax.stop_gradient(seq)[:, None]
    ratio = jnp.exp(jnp.minimum(log_s, 10.0))
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high)
    ind = {"clip_low": (pg1 < pg2) & (adv < 0), "clip_high": (pg1 < pg2) & (adv > 0)}
    ind["clip_dual"] = jnp.zeros_like(ind["clip_low"])
    return jnp.maximum(pg1, pg2), {**ind, "ratio": ratio, "approx_kl": -log_ratio}


def clipped_is_surrogate(
    logp: jax.Array, old_logp: jax.Array, adv: jax.Array, cfg: GRPOConfig
) -> tuple[jax.Array, dict]:
    """CISPO (MiniMax-M1; verl compute_policy_loss_cispo): -sg(clip(ratio, 1 - low, 1 + high)) * A * log pi, so
    clipped tokens keep their gradient; the log-ratio clamped to +-log_ratio_clamp before exp."""
    log_ratio = (logp - old_logp).astype(jnp.float32)
    ratio = jnp.exp(jnp.clip(log_ratio, -cfg.log_ratio_clamp, cfg.log_ratio_clamp))
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - cfg.clip_ratio_low, 1.0 + cfg.clip_ratio_high))
    ind = {"clip_low": ratio < 1.0 - cfg.clip_ratio_low, "clip_high": ratio > 1.0 + cfg.clip_ratio_high}
    ind["clip_dual"] = jnp.zeros_like(ind["clip_low"])
    return -weight * adv * logp.astype(jnp.float32), {**ind, "ratio": ratio, "approx_kl": -log_ratio}


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    cfg: GRPOConfig,
    *,
    is_weights: jax.Array | None = None,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, dict]:
    """Surrogate of `cfg.loss_mode` + KL - entropy bonus. logp/old_logp/ref_logp/mask [B, T], advantages [B] or
    [B, T]; is_weights [B, T]: truncated IS weights multiplying the surrogate (verl tis_imp_ratio); entropy [B, T]
    for the bonus. KL and entropy are aggregated as the loss (verl adds agg_loss of each).

    Returns (numerator, denominator, metrics) with metric sums over masked tokens (divide by
    metrics['tokens'] for means): clip fractions low / high / dual, ratio, approx_kl (old vs new, verl ppo_kl), kl,
    entropy.
    """
    mask = mask.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)
    adv = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, logp.shape)
    if cfg.loss_mode == "gspo":
        token_loss, ind = sequence_surrogate(logp, old_logp, adv, mask, cfg)
    elif cfg.loss_mode == "cispo":
        token_loss, ind = clipped_is_surrogate(logp, old_logp, adv, cfg)
    else:
        token_loss, ind = clipped_surrogate(logp, old_logp, adv, cfg)
    if is_weights is not None:
        token_loss = token_loss * jax.lax.stop_gradient(is_weights.astype(jnp.float32))
    metrics = {}
    if ref_logp is not None and cfg.kl_coef:
        kl = kl_penalty(logp, ref_logp, cfg.kl_estimator, cfg.kl_clamp)
        token_loss = token_loss + cfg.kl_coef * kl
        metrics["kl_sum"] = jnp.sum(kl * mask)
    if entropy is not None:
        if cfg.entropy_coeff:
            token_loss = token_loss - cfg.entropy_coeff * entropy.astype(jnp.float32)
        metrics["entropy_sum"] = jnp.sum(jax.lax.stop_gradient(entropy.astype(jnp.float32)) * mask)
    num, den = aggregate(token_loss, mask, cfg.loss_agg, cfg.norm_length)
    metrics["tokens"] = jnp.sum(mask)
    for k, v in ind.items():
        metrics[f"{k}_sum"] = jnp.sum(jax.lax.stop_gradient(v.astype(jnp.float32)) * mask)
    return num, den, metrics


def completion_bucket(longest: int, cfg: GRPOConfig) -> int:
    """Completion slots the log-prob passes and the update run on: the smallest multiple of
    ceil(max_new_tokens / length_buckets) that holds `longest` tokens, at most max_new_tokens."""
    step = -(-cfg.max_new_tokens // cfg.length_buckets)
    return min(cfg.max_new_tokens, max(1, -(-int(longest) // step)) * step)


def mini_batch_rows(num_rows: int, cfg: GRPOConfig) -> int:
    """Rows per optimizer update (groups kept whole); the rollout batch when ppo_mini_batch_size is 0."""
    rows = cfg.ppo_mini_batch_size * cfg.group_size if cfg.ppo_mini_batch_size else num_rows
    if num_rows % rows:
        raise ValueError(
            f"rollout batch of {num_rows} rows does not split into mini-batches of "
            f"{cfg.ppo_mini_batch_size} prompts x G={cfg.group_size} = {rows} rows"
        )
    return rows
