"""GRPO objective against hand-computed values on a 2-prompt x 2-sample example, and its gradient."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmx_jax.training.grpo_loss import (
    GRPOConfig,
    aggregate,
    group_advantages,
    group_has_signal,
    kl_penalty,
    policy_loss,
)


def test_group_advantages_by_hand():
    r = jnp.array([1.0, 0.0, 0.5, 0.5])  # prompt 0: {1, 0}; prompt 1: {0.5, 0.5}
    a = group_advantages(r, 2, eps=0.0 + 1e-12)
    # group 0: mean .5, unbiased std sqrt(((.5)^2*2)/1) = .7071 -> +-0.7071
    np.testing.assert_allclose(np.asarray(a), [1 / math.sqrt(2), -1 / math.sqrt(2), 0, 0], atol=1e-6)
    a_dr = group_advantages(r, 2, scale_by_std=False)
    np.testing.assert_allclose(np.asarray(a_dr), [0.5, -0.5, 0, 0])
    assert group_has_signal(r, 2).tolist() == [True, True, False, False]


def test_kl_estimators_by_hand():
    lp, ref = jnp.array([-1.0]), jnp.array([-1.5])
    d = -0.5  # ref - logp
    assert float(kl_penalty(lp, ref, "k1")[0]) == pytest.approx(0.5)
    assert float(kl_penalty(lp, ref, "k2")[0]) == pytest.approx(0.125)
    assert float(kl_penalty(lp, ref, "k3")[0]) == pytest.approx(math.exp(d) - d - 1)


def _hand_loss(logp, old, ref, adv, mask, eps_lo, eps_hi, beta, mode):
    """Plain-Python reference of the objective."""
    tok = []
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            ratio = math.exp(logp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            pg = max(-adv[b] * ratio, -adv[b] * clipped)
            lr = ref[b][t] - logp[b][t]
            row.append(pg + beta * (math.exp(lr) - lr - 1))
        tok.append(row)
    if mode == "token-mean":
        num = sum(tok[b][t] * mask[b][t] for b in range(len(tok)) for t in range(len(tok[b])))
        return num / sum(map(sum, mask))
    per = [sum(tok[b][t] * mask[b][t] for t in range(len(tok[b]))) / sum(mask[b]) for b in range(len(tok))]
    return sum(per) / len(per)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_policy_loss_and_grad_match_hand_computation(mode):
    # 2 prompts x 2 samples = 4 sequences, 3 completion tokens each
    logp = [[-0.5, -1.0, -2.0], [-0.7, -0.2, -1.5], [-1.2, -0.9, -0.3], [-0.4, -2.2, -0.8]]
    old = [[-0.6, -1.4, -2.0], [-0.5, -0.2, -1.0], [-1.2, -0.5, -0.35], [-0.4, -2.0, -1.1]]
    ref = [[-0.7, -1.1, -1.9], [-0.6, -0.3, -1.2], [-1.0, -0.8, -0.5], [-0.5, -2.1, -0.9]]
    mask = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]
    rewards = jnp.array([1.0, 0.2, 0.0, 1.5])
    adv = np.asarray(group_advantages(rewards, 2))
    cfg = GRPOConfig(
        group_size=2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_dual=0, kl_coef=0.05, loss_agg=mode
    )

    def f(lp):
        num, den, _ = policy_loss(lp, jnp.array(old), jnp.array(ref), jnp.asarray(adv), jnp.array(mask), cfg)
        return num / den

    got = float(f(jnp.array(logp)))
    want = _hand_loss(logp, old, ref, adv.tolist(), mask, 0.2, 0.28, 0.05, mode)
    assert got == pytest.approx(want, rel=1e-6)
    # gradient vs central finite differences of the plain-Python reference
    g = np.asarray(jax.grad(f)(jnp.array(logp, dtype=jnp.float32)))
    h = 1e-4
    for b in range(4):
        for t in range(3):
            up = [row[:] for row in logp]
            up[b][t] += h
            dn = [row[:] for row in logp]
            dn[b][t] -= h
            fd = (
                _hand_loss(up, old, ref, adv.tolist(), mask, 0.2, 0.28, 0.05, mode)
                - _hand_loss(dn, old, ref, adv.tolist(), mask, 0.2, 0.28, 0.05, mode)
            ) / (2 * h)
            assert g[b, t] == pytest.approx(fd, abs=2e-3), (b, t)
    assert g[0, 2] == 0 and g[2, 1] == 0  # masked tokens get no gradient


def test_aggregation_modes_and_presets():
    loss = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    assert [float(x) for x in aggregate(loss, mask, "token-mean")] == [10.0, 4.0]
    assert [float(x) for x in aggregate(loss, mask, "seq-mean-token-mean")] == [6.0, 2.0]
    assert [float(x) for x in aggregate(loss, mask, "seq-mean-token-sum")] == [10.0, 2.0]
    num, den = aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=5)
    assert float(num) == 2.0 and float(den) == 2.0
    assert GRPOConfig.dr_grpo().scale_by_std is False
    assert GRPOConfig.dapo().eps_high == 0.28 and GRPOConfig.dapo().dynamic_sampling
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k9")
