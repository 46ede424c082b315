"""GRPO objective against an independent torch transcription of the published verl/EasyR1 formulas.

The reference below is written from the formulas in verl's `core_algos.py` (compute_grpo_outcome_advantage,
compute_policy_loss_vanilla with dual-clip, agg_loss, kl_penalty) and EasyR1's (clamps), in torch; values and
gradients of every aggregation mode, dual-clip and every KL estimator are compared with dmx-jax's functions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dmx_jax.training.grpo_loss import (
    GRPOConfig,
    group_advantages,
    kl_penalty,
    overlong_penalty,
    policy_loss,
    truncated_rows,
)
from tests.helpers.torch_reference import ref_masked_mean, torch_float64  # noqa: F401 (autouse)


# ---- torch reference (transcribed from the published formulas) -------------------------------------------------
def ref_grpo_advantages(scores, group_size, eps=1e-6, norm_by_std=True):
    s = torch.as_tensor(scores).reshape(-1, group_size)
    mean, std = s.mean(dim=1, keepdim=True), s.std(dim=1, keepdim=True)  # torch.std: unbiased
    out = s - mean
    if norm_by_std:
        out = out / (std + eps)
    return out.reshape(-1)


def ref_agg_loss(loss_mat, mask, mode):
    if mode == "token-mean":
        return ref_masked_mean(loss_mat, mask)
    if mode == "seq-mean-token-sum":
        return torch.mean(torch.sum(loss_mat * mask, dim=-1))
    if mode == "seq-mean-token-mean":
        return torch.mean(torch.sum(loss_mat * mask, dim=-1) / torch.sum(mask, dim=-1))
    if mode == "seq-mean-token-sum-norm":  # verl: batch sum of row sums / horizon
        return torch.sum(torch.sum(loss_mat * mask, dim=-1)) / mask.shape[-1]
    raise ValueError(mode)


def ref_kl(logp, ref_logp, kind):
    if kind == "kl":
        return logp - ref_logp
    if kind == "abs":
        return (logp - ref_logp).abs()
    if kind == "mse":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "low_var_kl":
        kl = torch.clamp(ref_logp - logp, -20.0, 20.0)
        return torch.clamp(torch.exp(kl) - kl - 1, -10.0, 10.0)
    raise ValueError(kind)


def ref_policy_loss(old_logp, logp, adv, mask, low, high, dual, mode):
    """PPO clipped loss with dual clip (Ye et al. 2020) as in verl/EasyR1: log-ratio clamped to [-20, 20]."""
    neg_kl = torch.clamp(logp - old_logp, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - low, 1 + high)
    clip1 = torch.maximum(pg1, pg2)
    frac_clip = ref_masked_mean((pg2 > pg1).double(), mask)
    if dual:
        pg3 = -adv * dual
        clip2 = torch.minimum(pg3, clip1)
        frac_dual = ref_masked_mean(((clip1 > pg3) & (adv < 0)).double(), mask)
        pg = torch.where(adv < 0, clip2, clip1)
    else:
        frac_dual, pg = torch.zeros(()), clip1
    return ref_agg_loss(pg, mask, mode), frac_clip, frac_dual, ref_masked_mean(-neg_kl, mask)


# ---- fixtures ----------------------------------------------------------------------------------------------------
def _batch(seed=0, b=8, t=7, spread=1.2):
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.05, 3.0, size=(b, t))
    logp = old + rng.normal(0, spread, size=(b, t)) * 0.3  # ratios across both clip edges and beyond c = 3
    logp[0, 1] = old[0, 1] + 1.6  # ratio e^1.6 ~ 5 > c
    logp[1, 2] = old[1, 2] + 1.4
    ref = old + rng.normal(0, 0.4, size=(b, t))
    mask = (rng.uniform(size=(b, t)) < 0.8).astype(np.float64)
    mask[:, 0] = 1.0  # every row has a token (verl means over rows)
    mask[0, 1] = mask[1, 2] = 1.0
    rewards = rng.integers(0, 3, size=b).astype(np.float64) * 0.5
    rewards[:4] = [0.0, 0.0, 1.0, 0.5]  # rows 0, 1: negative advantage (dual-clip region)
    return logp, old, ref, mask, rewards


MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def test_advantages_match_verl():
    for g in (2, 4, 8):
        r = np.random.default_rng(g).integers(0, 4, size=4 * g).astype(np.float64) / 3
        r[:g] = 0.5  # a zero-std group gets zero advantage
        for norm in (True, False):
            want = ref_grpo_advantages(r, g, norm_by_std=norm).numpy()
            got = np.asarray(group_advantages(jnp.asarray(r, jnp.float32), g, scale_by_std=norm))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
            assert np.all(got[:g] == 0)


@pytest.mark.parametrize("kind,ours", [("kl", "k1"), ("abs", "abs"), ("mse", "k2"), ("low_var_kl", "k3")])
def test_kl_estimators_match_verl_with_clamps(kind, ours):
    logp, _, ref, _, _ = _batch(1)
    logp[0, 0], ref[0, 0] = -80.0, -0.01  # ref/pi ratio e^80: clamped, never inf
    logp[0, 1], ref[0, 1] = -0.01, -60.0
    want = ref_kl(torch.tensor(logp), torch.tensor(ref), kind).numpy()
    for name in (kind, ours):  # EasyR1 names are accepted as aliases
        got = np.asarray(kl_penalty(jnp.asarray(logp, jnp.float32), jnp.asarray(ref, jnp.float32), name))
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # gradient w.r.t. the policy log-probs
    lp_t = torch.tensor(logp, requires_grad=True)
    ref_kl(lp_t, torch.tensor(ref), kind).sum().backward()
    g = jax.grad(lambda x: kl_penalty(x, jnp.asarray(ref, jnp.float32), ours).sum())(jnp.asarray(logp, jnp.float32))
    np.testing.assert_allclose(np.asarray(g), lp_t.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dual", [3.0, 0.0])
def test_policy_loss_and_gradient_match_verl(mode, dual):
    logp, old, ref, mask, rewards = _batch(2)
    g = 4
    adv = ref_grpo_advantages(rewards, g).numpy()
    cfg = GRPOConfig(
        group_size=g, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_dual=dual, kl_coef=0.0, loss_agg=mode
    )
    b, t = logp.shape

    def ours(x):
        num, den, m = policy_loss(
            x, jnp.asarray(old, jnp.float32), None, jnp.asarray(adv, jnp.float32), jnp.asarray(mask, jnp.float32), cfg
        )
        return num / den, m

    lp_t = torch.tensor(logp, requires_grad=True)
    want, frac_clip, frac_dual, ppo_kl = ref_policy_loss(
        torch.tensor(old), lp_t, torch.tensor(adv)[:, None], torch.tensor(mask), 0.2, 0.28, dual, mode
    )
    want.backward()
    (got, m), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(logp, jnp.float32))
    scale = b if mode == "seq-mean-token-sum-norm" else 1  # ours also averages the rows (Dr.GRPO's 1/G)
    assert float(got) * scale == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(np.asarray(grad) * scale, lp_t.grad.numpy(), rtol=1e-4, atol=1e-6)
    tokens = float(m["tokens"])
    assert (float(m["clip_low_sum"]) + float(m["clip_high_sum"])) / tokens == pytest.approx(float(frac_clip))
    assert float(m["clip_dual_sum"]) / tokens == pytest.approx(float(frac_dual))
    assert float(m["approx_kl_sum"]) / tokens == pytest.approx(float(ppo_kl), rel=1e-5)
    if dual:
        assert float(frac_dual) > 0  # the fixture does reach the dual-clip region


def test_kl_loss_term_and_clamped_overflow_is_finite():
    logp, old, ref, mask, rewards = _batch(3)
    adv = ref_grpo_advantages(rewards, 4).numpy()
    logp[2, 3], mask[2, 3] = old[2, 3] + 500.0, 0.0  # a masked token whose ratio overflows fp32
    cfg = GRPOConfig(group_size=4, kl_coef=0.05, kl_estimator="low_var_kl")

    def ours(x):
        num, den, _ = policy_loss(
            x,
            jnp.asarray(old, jnp.float32),
            jnp.asarray(ref, jnp.float32),
            jnp.asarray(adv, jnp.float32),
            jnp.asarray(mask, jnp.float32),
            cfg,
        )
        return num / den

    val, grad = jax.value_and_grad(ours)(jnp.asarray(logp, jnp.float32))
    assert np.isfinite(float(val)) and np.isfinite(np.asarray(grad)).all()
    lp_t = torch.tensor(logp, requires_grad=True)
    pg, *_ = ref_policy_loss(
        torch.tensor(old), lp_t, torch.tensor(adv)[:, None], torch.tensor(mask), 0.2, 0.3, 3.0, "token-mean"
    )
    want = pg + 0.05 * ref_masked_mean(ref_kl(lp_t, torch.tensor(ref), "low_var_kl"), torch.tensor(mask))
    want.backward()
    assert float(val) == pytest.approx(float(want), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), lp_t.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_overlong_penalty_and_truncation():
    # DAPO: L_max 20, buffer 5 -> no penalty up to 15 tokens, linear to -factor at 20
    lengths = jnp.array([3, 15, 16, 18, 20])
    got = np.asarray(overlong_penalty(lengths, 20, 5, 1.0))
    want = [min(-(L - 15) / 5 * 1.0, 0.0) for L in [3, 15, 16, 18, 20]]
    np.testing.assert_allclose(got, want, atol=1e-7)
    tokens = jnp.array([[5, 6, 9], [5, 2, 0], [5, 6, 2]])
    mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    assert np.asarray(truncated_rows(tokens, mask, (2,))).tolist() == [True, False, False]
    assert math.isclose(float(overlong_penalty(jnp.array([7]), 10, 0, 1.0)[0]), 0.0)


def test_default_config_is_easyr1s():
    cfg = GRPOConfig()
    assert (cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_dual) == (0.2, 0.3, 3.0)
    assert cfg.loss_agg == "token-mean" and cfg.kl_estimator == "k3" and cfg.kl_coef == 0.01
    assert cfg.old_logp == "trainer" and cfg.std_eps == 1e-6
    d = GRPOConfig.dapo()
    assert d.clip_ratio_high == 0.28 and d.kl_coef == 0 and d.dynamic_sampling and d.overlong_filtering
    with pytest.raises(ValueError, match="old_logp"):
        GRPOConfig(old_logp="vllm")
