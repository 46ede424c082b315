"""GRPO variants as configuration, each against a torch transcription of the upstream formula, then two learner
steps each on the toy LM.

References transcribed from verl's core_algos.py: compute_rloo_outcome_advantage,
compute_reinforce_plus_plus_outcome_advantage (with masked_whiten from verl.utils.torch_functional),
compute_policy_loss_gspo, compute_policy_loss_cispo, the truncated-IS factor of compute_policy_loss_vanilla
(tis_imp_ratio_cap), apply_kl_penalty (KL in the reward) with AdaptiveKLController (its adaptive coefficient) and
the entropy bonus of the actor's loss (pg_loss - entropy_coeff * agg_loss(entropy)).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from dmx_jax.training.checkpoint import Checkpointer, abstract_like
from dmx_jax.training.grpo import GRPOLearner, initial_aux
from dmx_jax.training.grpo_loss import (
    ADV_ESTIMATORS,
    LOSS_MODES,
    GRPOConfig,
    adaptive_kl_coef,
    compute_advantages,
    kl_penalty,
    policy_loss,
)
from dmx_jax.training.optim import OptimConfig, make_optimizer
from dmx_jax.training.rollout import PolicyLogprob, Reference, Sampler
from dmx_jax.training.state import init_train_state
from experiments.configs import RLConfig
from experiments.stages import grpo_updates_per_step
from tests.helpers.torch_reference import ref_masked_mean, torch_float64  # noqa: F401 (autouse)
from tests.helpers.toy_lm import ToyLM


# ---- torch transcriptions -------------------------------------------------------------------------------------
def ref_masked_whiten(values, mask):
    mean = ref_masked_mean(values, mask)
    var = ref_masked_mean((values - mean) ** 2, mask)
    var = var * mask.sum() / (mask.sum() - 1)  # unbiased (Bessel)
    return (values - mean) * torch.rsqrt(var + 1e-8)


class RefAdaptiveKLController:
    """verl core_algos.AdaptiveKLController."""

    def __init__(self, init_kl_coef, target_kl, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target_kl, horizon

    def update(self, current_kl, n_steps):
        proportional_error = np.clip(current_kl / self.target - 1, -0.2, 0.2)
        mult = 1 + proportional_error * n_steps / self.horizon
        self.value *= mult


def ref_rloo(scores, group_size):
    s = torch.as_tensor(scores).clone()
    out = s.clone()
    for g in range(len(s) // group_size):
        idx = slice(g * group_size, (g + 1) * group_size)
        mean = s[idx].mean()
        out[idx] = s[idx] * group_size / (group_size - 1) - mean * group_size / (group_size - 1)
    return out


def ref_reinforce_pp(token_level_rewards, response_mask, gamma):
    returns = torch.zeros_like(token_level_rewards)
    running = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * response_mask[:, t]
    return ref_masked_whiten(returns, response_mask) * response_mask


def ref_token_level_scores(scores, mask):
    """The reward managers' layout: the sequence score on the last response token."""
    out = torch.zeros_like(mask)
    lengths = mask.sum(-1).long()
    for i, n in enumerate(lengths):
        if n > 0:
            out[i, n - 1] = scores[i]
    return out


def ref_gspo(old_log_prob, log_prob, advantages, response_mask, low, high):
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    nkl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_ratio = log_prob - log_prob.detach() + nkl_seq.detach().unsqueeze(-1)
    ratio = torch.exp(torch.clamp(log_ratio, max=10.0))
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    pg = torch.maximum(pg1, pg2)
    seq = torch.sum(pg * response_mask, dim=-1) / torch.sum(response_mask, dim=-1)  # seq-mean-token-mean
    return seq.mean()


def ref_cispo(old_log_prob, log_prob, advantages, response_mask, low, high):
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    clipped = torch.clamp(ratio, 1 - low, 1 + high).detach()
    pg = -clipped * advantages * log_prob
    return ref_masked_mean(pg, response_mask)  # token-mean


def ref_vanilla_tis(old_log_prob, log_prob, advantages, response_mask, rollout_log_probs, low, high, c, cap):
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, -20.0, 20.0))
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    clip1 = torch.maximum(pg1, pg2)
    pg = torch.where(advantages < 0, torch.min(-advantages * c, clip1), clip1)
    pg = pg * torch.clamp(torch.exp(old_log_prob - rollout_log_probs), max=cap)
    return ref_masked_mean(pg, response_mask)


def _batch(seed=0, b=8, t=7):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (b, t))
    old = logp + rng.normal(0, 0.3, (b, t))
    mask = (np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None]).astype(np.float64)
    return logp, old, mask, rng.normal(size=b)


def _loss_and_grad(cfg, logp, old, mask, adv, **kw):
    def f(x):
        num, den, _ = policy_loss(
            x,
            jnp.asarray(old, jnp.float32),
            None,
            jnp.asarray(adv, jnp.float32),
            jnp.asarray(mask, jnp.float32),
            cfg,
            **kw,
        )
        return num / den

    v, g = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float32))
    return float(v), np.asarray(g)


def _torch_loss_and_grad(fn, logp, *args):
    x = torch.tensor(logp, requires_grad=True)
    loss = fn(*args[:1], x, *args[1:])
    loss.backward()
    return float(loss), x.grad.numpy()


# ---- advantages -----------------------------------------------------------------------------------------------
def test_rloo_advantages_match_verl():
    scores = np.random.default_rng(1).uniform(size=12)
    mask = np.ones((12, 3))
    got = compute_advantages(
        jnp.asarray(scores, jnp.float32), jnp.asarray(mask), GRPOConfig(group_size=4, adv_estimator="rloo")
    )
    np.testing.assert_allclose(np.asarray(got)[:, 0], ref_rloo(scores, 4).numpy(), atol=1e-6)
    # leave-one-out: each sample against the mean of the other three
    s = scores.reshape(3, 4)
    loo = (s.sum(1, keepdims=True) - s) / 3
    np.testing.assert_allclose(np.asarray(got)[:, 0], (s - loo).reshape(-1), atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_plus_plus_advantages_match_verl(gamma):
    _, _, mask, _ = _batch(seed=2)
    scores = np.random.default_rng(3).uniform(size=mask.shape[0])
    kl_terms = np.random.default_rng(4).normal(0, 0.05, mask.shape)
    cfg = GRPOConfig(group_size=4, adv_estimator="reinforce_plus_plus", gamma=gamma)
    got = compute_advantages(
        jnp.asarray(scores, jnp.float32), jnp.asarray(mask, jnp.float32), cfg, jnp.asarray(kl_terms, jnp.float32)
    )
    m = torch.as_tensor(mask)
    token_rewards = ref_token_level_scores(torch.as_tensor(scores), m) + torch.as_tensor(kl_terms) * m
    want = ref_reinforce_pp(token_rewards, m, gamma).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_kl_in_reward_enters_outcome_advantages_as_verl_sums_token_rewards():
    """verl apply_kl_penalty then compute_grpo_outcome_advantage: token_level_rewards = scores at the last token -
    beta * kl * mask, and the outcome estimator scores a row by their sum."""
    logp, old, mask, _ = _batch(seed=5)
    ref = old + np.random.default_rng(6).normal(0, 0.2, old.shape)
    scores = np.random.default_rng(7).uniform(size=mask.shape[0])
    beta = 0.3
    kld = np.asarray(kl_penalty(jnp.asarray(old), jnp.asarray(ref), "k1")) * mask
    np.testing.assert_allclose(kld, (old - ref) * mask, atol=1e-6)  # verl "kl": logprob - ref_logprob
    got = compute_advantages(
        jnp.asarray(scores, jnp.float32),
        jnp.asarray(mask, jnp.float32),
        GRPOConfig(group_size=4),
        jnp.asarray(-beta * kld, jnp.float32),
    )
    totals = (ref_token_level_scores(torch.as_tensor(scores), torch.as_tensor(mask)).numpy() - beta * kld).sum(-1)
    s = totals.reshape(-1, 4)
    want = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(np.asarray(got), want[:, None] * mask, atol=1e-5)


# ---- losses ---------------------------------------------------------------------------------------------------
def test_gspo_loss_and_gradient_match_verl():
    logp, old, mask, adv = _batch(seed=8)
    cfg = GRPOConfig.gspo(group_size=4, clip_ratio_low=0.05, clip_ratio_high=0.08)  # some rows clip
    v, g = _loss_and_grad(cfg, logp, old, mask, adv)
    adv_t = torch.as_tensor(adv)[:, None].expand(-1, logp.shape[1])
    rv, rg = _torch_loss_and_grad(
        lambda o, x, a, m: ref_gspo(o, x, a, m, 0.05, 0.08), logp, torch.as_tensor(old), adv_t, torch.as_tensor(mask)
    )
    assert v == pytest.approx(rv, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g * mask, rg * mask, atol=1e-6)
    # sequence-level: every token of a row shares one ratio, unlike the token-level surrogate
    _, gv = _loss_and_grad(
        GRPOConfig(group_size=4, clip_ratio_low=0.05, clip_ratio_high=0.08, loss_agg="seq-mean-token-mean"),
        logp,
        old,
        mask,
        adv,
    )
    assert np.abs(gv - g).max() > 1e-3


def test_cispo_loss_and_gradient_match_verl_and_keep_clipped_tokens():
    logp, old, mask, adv = _batch(seed=9)
    cfg = GRPOConfig(group_size=4, loss_mode="cispo", clip_ratio_low=0.2, clip_ratio_high=0.2)
    v, g = _loss_and_grad(cfg, logp, old, mask, adv)
    adv_t = torch.as_tensor(adv)[:, None].expand(-1, logp.shape[1])
    rv, rg = _torch_loss_and_grad(
        lambda o, x, a, m: ref_cispo(o, x, a, m, 0.2, 0.2), logp, torch.as_tensor(old), adv_t, torch.as_tensor(mask)
    )
    assert v == pytest.approx(rv, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g, rg, atol=1e-6)
    clipped = (np.abs(np.exp(logp - old) - 1) > 0.2) & (mask > 0)
    assert clipped.any() and (np.abs(g[clipped]) > 0).all()  # PPO would give these tokens no gradient


def test_truncated_importance_sampling_matches_verl():
    logp, old, mask, adv = _batch(seed=10)
    sampler = old + np.random.default_rng(11).normal(0, 0.8, old.shape)
    cap = 2.0
    weights = jnp.minimum(jnp.exp(jnp.asarray(old - sampler, jnp.float32)), cap)
    cfg = GRPOConfig(group_size=4, kl_coef=0.0, tis_cap=cap)
    v, g = _loss_and_grad(cfg, logp, old, mask, adv, is_weights=weights)
    adv_t = torch.as_tensor(adv)[:, None].expand(-1, logp.shape[1])
    rv, rg = _torch_loss_and_grad(
        lambda o, x, a, m: ref_vanilla_tis(o, x, a, m, torch.as_tensor(sampler), 0.2, 0.3, 3.0, cap),
        logp,
        torch.as_tensor(old),
        adv_t,
        torch.as_tensor(mask),
    )
    assert v == pytest.approx(rv, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(g, rg, atol=1e-6)
    assert float(weights.max()) == cap and float(weights.min()) < 1.0  # the fixture caps and down-weights


def test_entropy_bonus_is_minus_coeff_times_aggregated_entropy():
    logp, old, mask, adv = _batch(seed=12)
    entropy = jnp.asarray(np.random.default_rng(13).uniform(0, 3, logp.shape), jnp.float32)
    for mode in ("token-mean", "seq-mean-token-mean"):
        base = GRPOConfig(group_size=4, kl_coef=0.0, loss_agg=mode)
        v0, _ = _loss_and_grad(base, logp, old, mask, adv)
        v1, _ = _loss_and_grad(dataclasses.replace(base, entropy_coeff=0.01), logp, old, mask, adv, entropy=entropy)
        m = torch.as_tensor(mask)
        e = torch.as_tensor(np.asarray(entropy, np.float64))
        agg = ref_masked_mean(e, m) if mode == "token-mean" else ((e * m).sum(-1) / m.sum(-1)).mean()
        assert v1 == pytest.approx(v0 - 0.01 * float(agg), rel=1e-5, abs=1e-6)


# ---- configuration --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,allowed", [("adv_estimator", "gae", ADV_ESTIMATORS), ("loss_mode", "ppo", LOSS_MODES)]
)
def test_unknown_variant_names_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"grpo.{field} must be one of") as e:
        GRPOConfig(**{field: value})
    assert all(a in str(e.value) for a in allowed) and value in str(e.value)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"loss_mode": "gspo"}, "loss_agg"),
        ({"old_logp": "current", "num_iterations": 2}, "num_iterations"),
        ({"tis_cap": 0.5}, "tis_cap"),
    ],
)
def test_invalid_combinations_are_one_line(kw, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kw)


# ---- two learner steps per variant on the toy LM --------------------------------------------------------------
TN = 5


def _toy_learner(cfg):
    graphdef, st = nnx.split(ToyLM(seed=1))
    params = nnx.to_pure_dict(st)

    def logits(model, prompt, completion):
        return model.hidden(jnp.concatenate([prompt, completion], axis=1)) @ model.lm_head.kernel[...]

    def logprob(model, batch, return_entropy=False):
        p = batch["prompt"].shape[1]
        lp = jax.nn.log_softmax(logits(model, batch["prompt"], batch["completion"])[:, p - 1 : -1].astype(jnp.float32))
        tok = jnp.take_along_axis(lp, batch["completion"][..., None], -1)[..., 0]
        return (tok, -jnp.sum(jnp.exp(lp) * lp, -1)) if return_entropy else tok

    @jax.jit
    def sample(params, rep, rng):
        model = nnx.merge(graphdef, params)
        prompt = rep["prompt"]
        comp = jnp.zeros((prompt.shape[0], TN), jnp.int32)
        for t in range(TN):
            lg = logits(model, prompt, comp)[:, prompt.shape[1] - 1 + t]
            comp = comp.at[:, t].set(jax.random.categorical(jax.random.fold_in(rng, t), lg))
        lp = logprob(model, {"prompt": prompt, "completion": comp}) - 0.05  # a sampler that drifts
        return comp, lp, jnp.ones_like(comp, jnp.float32)

    def reward_fn(tokens, mask, rep):
        return {"overall": jnp.mean((tokens == 7).astype(jnp.float32) + 0.01 * (tokens % 3), axis=1)}

    tx = optax.sgd(0.5)
    learner = GRPOLearner(
        graphdef,
        cfg,
        tx,
        sampler=Sampler(sample),
        reward_fn=reward_fn,
        logprob=PolicyLogprob(logprob, with_entropy=True),
        reference=Reference(params),
        seed=0,
    )
    return learner, init_train_state(params, tx)


PROMPTS = {"prompt": np.random.default_rng(0).integers(0, 32, size=(4, 5)).astype(np.int32)}
VARIANTS = {
    "rloo": GRPOConfig(group_size=4, max_new_tokens=TN, adv_estimator="rloo"),
    "reinforce_plus_plus": GRPOConfig(group_size=4, max_new_tokens=TN, adv_estimator="reinforce_plus_plus", gamma=0.95),
    "gspo": GRPOConfig.gspo(group_size=4, max_new_tokens=TN, num_iterations=2),
    "cispo": GRPOConfig(group_size=4, max_new_tokens=TN, loss_mode="cispo", num_iterations=2),
    "kl_in_reward": GRPOConfig(group_size=4, max_new_tokens=TN, kl_coef=0.0, kl_reward_coef=0.1),
    "tis_entropy": GRPOConfig(group_size=4, max_new_tokens=TN, tis_cap=1.02, entropy_coeff=0.01),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_runs_two_learner_steps(name):
    learner, state = _toy_learner(VARIANTS[name])
    start = jax.tree.map(np.array, state.params)
    for _ in range(2):
        state, m = learner.step(state, PROMPTS)
    assert int(state.step) == 2 and np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
    moved = max(
        float(np.abs(np.asarray(b) - a).max()) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(state.params))
    )
    assert moved > 1e-5
    if name == "kl_in_reward":
        assert m["kl_reward/coef"] == 0.1 and "kl" not in m  # in the reward, not the loss
    if name == "tis_entropy":
        assert 0.0 < m["tis/capped"] <= 1.0 and m["tis/weight"] <= 1.02 + 1e-6 and m["entropy"] > 0


def test_on_policy_shortcut_equals_the_recomputed_pi_old():
    """old_logp='current' (no pi_old pass, ratio = exp(logp - sg(logp))) gives the update of the recomputed pi_old
    on-policy, and still reports the sampler drift (0.05 by construction) from inside the update."""
    cfg = GRPOConfig(group_size=4, max_new_tokens=TN, kl_coef=0.01)
    learner, state = _toy_learner(cfg)
    want, m_want = learner.step(jax.tree.map(jnp.array, state), PROMPTS)
    learner, state = _toy_learner(dataclasses.replace(cfg, old_logp="current"))
    batch, _ = learner.rollout(state.params, PROMPTS, jax.random.fold_in(jax.random.key(0), 0))
    assert batch.old_logp is None
    got, m = learner.step(state, PROMPTS)
    for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    assert m["drift/logp_abs_mean"] == pytest.approx(0.05, abs=1e-4)
    assert m_want["drift/logp_abs_mean"] == pytest.approx(0.05, abs=1e-4)
    assert m["loss"] == pytest.approx(m_want["loss"], abs=1e-6)


def test_kl_in_reward_reaches_the_rollout_advantages():
    """The rollout's advantages are those of scores - beta * KL(pi_old || ref) per token (verl apply_kl_penalty),
    after one update has moved the policy away from the reference."""
    cfg = GRPOConfig(group_size=4, max_new_tokens=TN, kl_coef=0.0, kl_reward_coef=0.5)
    learner, state = _toy_learner(cfg)
    state, _ = learner.step(state, PROMPTS)
    batch, m = learner.rollout(state.params, PROMPTS, jax.random.key(3))
    ref = learner._logp_ref(learner.ref_params, batch.inputs, None)
    kld = (batch.old_logp - ref) * batch.loss_mask
    assert float(jnp.abs(kld).max()) > 1e-3  # the fixture has a KL to penalise
    want = compute_advantages(batch.scores, batch.loss_mask, cfg, -0.5 * kld)
    np.testing.assert_allclose(np.asarray(batch.advantages), np.asarray(want), atol=1e-5)
    plain = compute_advantages(batch.scores, batch.loss_mask, cfg)
    assert float(jnp.abs(plain - want).max()) > 1e-3
    row_kl = kld.sum(1) / batch.loss_mask.sum(1)
    assert m["kl_reward/kl"] == pytest.approx(float(row_kl.mean()), abs=1e-6)


def test_learning_rate_schedule_steps_once_per_rollout():
    """verl and EasyR1 step their scheduler once per rollout: with 2 epochs x 2 mini-batches = 4 updates per GRPO
    step, a 4-step linear warmup reaches lr / 4 at the fifth update (the second step), not at the second."""
    rl = RLConfig(prompts_per_step=4, algo=GRPOConfig(num_iterations=2, ppo_mini_batch_size=2))
    assert grpo_updates_per_step(rl) == 4
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=4, schedule="constant", clip_norm=0.0, eps=1e-12)
    params = {"w": jnp.zeros(3)}
    for per_step, want in ((4, [0, 0, 0, 0, 0.25, 0.25]), (1, [0, 0.25, 0.5, 0.75, 1.0, 1.0])):
        tx = make_optimizer(cfg, updates_per_step=per_step)
        state, got = tx.init(params), []
        for _ in range(6):  # constant gradient: each Adam update is lr(count) x sign
            upd, state = tx.update({"w": jnp.ones(3)}, state, params)
            got.append(float(jnp.abs(upd["w"]).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_adaptive_kl_coefficient_follows_verls_controller_on_fuzzed_batches():
    rng = np.random.default_rng(0)
    for target, horizon in ((0.1, 500), (0.01, 64), (2.0, 10_000)):
        ref, coef = RefAdaptiveKLController(0.05, target, horizon), 0.05
        for _ in range(100):
            kl, n = float(rng.exponential(target)), int(rng.integers(1, 64))  # errors inside and beyond +-0.2
            ref.update(kl, n)
            coef = adaptive_kl_coef(coef, kl, n, target, horizon)
            assert coef == pytest.approx(ref.value, rel=1e-12)


def test_adaptive_kl_in_reward_steers_the_coefficient_in_the_train_state_and_checkpoints_it(tmp_path):
    """Each rollout batch uses the controller's value, which then moves by verl's rule with the batch's KL and
    row count; the value lives in state.aux and a checkpoint round trip keeps it."""
    cfg = GRPOConfig(
        group_size=4,
        max_new_tokens=TN,
        kl_coef=0.0,
        kl_reward_coef=0.5,
        kl_ctrl="adaptive",
        kl_target=1e-3,
        kl_horizon=32,
    )
    learner, state = _toy_learner(cfg)
    state = state.replace(aux=initial_aux(cfg))
    ref, seen = RefAdaptiveKLController(0.5, 1e-3, 32), []
    for _ in range(3):
        state, m = learner.step(state, PROMPTS)
        assert m["kl_reward/coef"] == pytest.approx(ref.value, rel=1e-6)  # used before it moves
        ref.update(m["kl_reward/kl"], 16)  # 4 prompts x 4 samples
        assert float(state.aux["kl_reward_coef"]) == pytest.approx(ref.value, rel=1e-6)
        seen.append(m["kl_reward/kl"])
    assert seen[0] == 0.0 and max(seen) > 1e-3  # the fixture drives the error to both clips
    ck = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
    ck.save(3, state, force=True)
    ck.wait()
    restored, _, _ = ck.restore(abstract_like(state))
    assert float(restored.aux["kl_reward_coef"]) == float(state.aux["kl_reward_coef"]) != 0.5
    assert initial_aux(GRPOConfig(group_size=4)) == {}  # fixed coefficient: no state, checkpoints unchanged
    for bad in (
        dict(kl_ctrl="pid"),
        dict(kl_ctrl="adaptive"),
        dict(kl_ctrl="adaptive", kl_reward_coef=0.1, kl_target=0.0),
    ):
        with pytest.raises(ValueError, match="kl_ctrl"):
            GRPOConfig(group_size=4, **bad)
