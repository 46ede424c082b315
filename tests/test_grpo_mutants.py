"""GRPO behaviours that a planted bug would break silently (tests/helpers/grpo_mutants.py plants each and checks
that the test below for it fails):

1. pi_old is the trainer's recomputation, not the sampler's log-probs (the first ratio is exactly 1);
2. the update reads `loss_mask`: rows masked by dynamic sampling or overlong filtering do not reach the gradient;
3. mini-batches are group-strided (group g in mini-batch g % k), not contiguous;
4. DAPO's soft overlong penalty is added to the reward once;
5. seq-mean aggregations average over rows with at least one loss token (verl's agg_loss);
6. k3 clamps its log-ratio to [-20, 20] before exp (verl's kl_penalty low_var_kl), so its gradient stays finite.

The learner tests use a fake sampler on the toy LM: fixed completions of chosen lengths and fixed rewards, so every
mask, group and penalty is known in advance. References are plain numpy transcriptions of verl's formulas.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.grpo_loss import GRPOConfig, aggregate, kl_penalty, policy_loss
from dmx_jax.training.rollout import PolicyLogprob, Sampler
from dmx_jax.training.state import init_train_state
from tests.helpers.toy_lm import ToyLM

TN = 6  # completion slots (= max_new_tokens = DAPO's max response length)


def _logprobs(model, batch):
    """Per-token log-probs of the completion under the toy LM, prompt and completion concatenated."""
    ids = jnp.concatenate([batch["prompt"], batch["completion"]], axis=1)
    logits = model.hidden(ids) @ model.lm_head.kernel[...]
    p = batch["prompt"].shape[1]
    lp = jax.nn.log_softmax(logits[:, p - 1 : -1].astype(jnp.float32), -1)
    return jnp.take_along_axis(lp, batch["completion"][..., None], -1)[..., 0]


def _fake_sampler(graphdef, lengths, offset=0.0):
    """sample_fn with fixed completions of the given lengths (token 0 after the end, no stop token, so a row of TN
    tokens counts as truncated) whose log-probs are the trainer's plus `offset`."""
    lengths = jnp.asarray(lengths)

    @jax.jit
    def sample_fn(params, rep, rng):
        prompt = rep["prompt"]
        n = prompt.shape[0]
        mask = (jnp.arange(TN)[None] < lengths[:, None]).astype(jnp.float32)
        tokens = ((prompt[:, :1] + 3 * jnp.arange(n)[:, None] + jnp.arange(TN)[None]) % 31 + 1) * mask.astype(jnp.int32)
        lp = _logprobs(nnx.merge(graphdef, params), {"prompt": prompt, "completion": tokens})
        return tokens, lp + offset, mask

    return sample_fn


def _prompts(n):
    """n prompts whose first token (10, 11, ...) names the group."""
    ids = np.tile(np.arange(1, 6, dtype=np.int32), (n, 1))
    ids[:, 0] = 10 + np.arange(n)
    return {"prompt": ids}


def _learner(cfg, rewards, lengths, *, offset=0.0, lr=1.0):
    """Learner on the toy LM with the fake sampler and fixed rewards [P*G]; plain SGD, so any change in the
    gradient's normalisation shows in the parameters."""
    graphdef, st = nnx.split(ToyLM(seed=1))
    params = nnx.to_pure_dict(st)
    tx = optax.sgd(lr)
    overall = jnp.asarray(rewards, jnp.float32)
    learner = GRPOLearner(
        graphdef,
        cfg,
        tx,
        sampler=Sampler(_fake_sampler(graphdef, lengths, offset)),
        reward_fn=lambda tokens, mask, rep: {"overall": overall},
        logprob=PolicyLogprob(_logprobs),
        seed=0,
    )
    return learner, init_train_state(params, tx), graphdef


def _copy(state):
    return jax.tree.map(jnp.array, state)  # the update donates its state


def _max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))


def _verl_advantages(scores, group_size, eps=1e-6):
    """verl compute_grpo_outcome_advantage: (score - mean) / (unbiased std + eps) per group."""
    s = np.asarray(scores, np.float64).reshape(-1, group_size)
    return ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + eps)).reshape(-1)


# ---- 1. pi_old ------------------------------------------------------------------------------------------------
def test_old_logp_is_the_trainers_recomputation_not_the_samplers():
    """A sampler whose log-probs are off by +0.1: pi_old is the trainer's own pass, so on the first update of
    mu = 1 the ratio is exactly 1 (nothing clipped) while the drift metric reports the 0.1."""
    cfg = GRPOConfig(group_size=4, kl_coef=0.0, max_new_tokens=TN)
    rewards = [1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0, 0.25]
    learner, state, graphdef = _learner(cfg, rewards, [6, 3, 4, 2, 5, 6, 1, 3], offset=0.1)
    prompts = _prompts(2)
    batch, m = learner.rollout(state.params, prompts, jax.random.key(0))
    mask = np.asarray(batch.completion_mask) > 0
    trainer = np.asarray(jax.jit(lambda p, b: _logprobs(nnx.merge(graphdef, p), b))(state.params, batch.inputs))
    np.testing.assert_allclose(np.asarray(batch.old_logp)[mask], trainer[mask], atol=1e-6)
    assert m["drift/logp_abs_mean"] == pytest.approx(0.1, abs=1e-5)
    _, m = learner.step(state, prompts)
    assert m["updates"] == 1.0
    assert abs(m["ratio"] - 1.0) < 1e-6 and abs(m["approx_kl"]) < 1e-6
    assert m["clip_low"] + m["clip_high"] + m["clip_dual"] == 0.0


# ---- 2. loss_mask ---------------------------------------------------------------------------------------------
# 3 groups x G = 4: group 1 has no reward signal; rows 0 and 9 use all TN slots (truncated) with advantage != 0
MASK_REWARDS = [1.0, 0.0, 0.5, 0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.25, 1.0]
MASK_LENGTHS = [6, 3, 4, 2, 2, 5, 3, 4, 5, 6, 1, 3]


@pytest.mark.parametrize("masking,masked_rows", [("dynamic_sampling", [4, 5, 6, 7]), ("overlong_filtering", [0, 9])])
def test_rows_masked_out_of_the_loss_do_not_reach_the_update(masking, masked_rows):
    """One learner step (one SGD update) on a batch whose dynamic-sampling or overlong mask removes some rows equals
    the update on the batch without those rows; with padding tokens changed too, as masked tokens do not count."""
    cfg = GRPOConfig.dapo(
        group_size=4, max_new_tokens=TN, **{"dynamic_sampling": False, "overlong_filtering": False, masking: True}
    )
    learner, state, _ = _learner(cfg, MASK_REWARDS, MASK_LENGTHS)
    prompts = _prompts(3)
    batch, _ = learner.rollout(state.params, prompts, jax.random.key(0))
    lm = np.asarray(batch.loss_mask)
    assert np.flatnonzero(~lm.any(axis=1)).tolist() == masked_rows
    keep = np.flatnonzero(lm.any(axis=1))
    np.testing.assert_array_equal(lm[keep], np.asarray(batch.completion_mask)[keep])
    sub = jax.tree.map(lambda x: x[keep], batch)
    sub = sub.replace(inputs={**sub.inputs, "completion": jnp.where(sub.completion_mask > 0, sub.completion, 7)})
    want, _ = learner._update(_copy(state), sub)
    # the fixture discriminates: counting the masked rows changes the update
    ignored, _ = learner._update(_copy(state), batch.replace(loss_mask=batch.completion_mask))
    assert _max_diff(ignored, want) > 1e-3
    got, m = learner.step(_copy(state), prompts)
    assert m["updates"] == 1.0
    assert _max_diff(got, want) < 1e-6


# ---- 3. group-strided mini-batches ----------------------------------------------------------------------------
def test_mini_batches_are_group_strided():
    """4 groups of G = 2, 2 mini-batches, mu = 2: group g goes to mini-batch g % 2 (groups 0 and 2, then 1 and 3),
    each pass in that order. Only groups 0 and 1 have signal, so contiguous mini-batches (0 and 1, then 2 and 3)
    would also move the parameters differently."""
    cfg = GRPOConfig(group_size=2, ppo_mini_batch_size=2, num_iterations=2, kl_coef=0.0, max_new_tokens=TN)
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    learner, state, _ = _learner(cfg, rewards, [6, 3, 4, 2, 5, 6, 1, 3])
    prompts = _prompts(4)
    batch, _ = learner.rollout(state.params, prompts, jax.random.key(0))

    def manual(groups):
        s = _copy(state)
        for _ in range(cfg.num_iterations):
            for gs in groups:
                rows = np.concatenate([np.arange(2) + 2 * g for g in gs])
                s, _ = learner._update(s, jax.tree.map(lambda x: x[rows], batch))
        return s

    strided, contiguous = manual([[0, 2], [1, 3]]), manual([[0, 1], [2, 3]])
    assert _max_diff(strided, contiguous) > 1e-3
    seen, update = [], learner._update

    def spy(s, mb):
        seen.append(np.asarray(mb.inputs["prompt"])[:, 0].tolist())
        return update(s, mb)

    learner._update = spy
    got, m = learner.step(_copy(state), prompts)
    assert m["updates"] == 4.0
    assert seen == [[10, 10, 12, 12], [11, 11, 13, 13]] * 2
    assert _max_diff(got, strided) < 1e-6


# ---- 4. overlong penalty --------------------------------------------------------------------------------------
def _dapo_overlong_reward(length, max_resp_len, buffer_len, factor):
    """verl's DAPO reward manager (overlong_buffer): the reward gains min(-exceed / L_cache * factor, 0)."""
    expected_len = max_resp_len - buffer_len
    exceed_len = length - expected_len
    return min(-exceed_len / buffer_len * factor, 0)


def test_overlong_penalty_is_added_once():
    """L_max = TN = 6, L_cache = 3, factor 0.5: rows longer than 3 tokens lose 1/6 per extra token, once, before
    the group advantages."""
    cfg = GRPOConfig(group_size=4, kl_coef=0.0, max_new_tokens=TN, overlong_buffer_len=3, overlong_penalty_factor=0.5)
    raw = [1.0, 0.0, 1.0, 0.5, 0.0, 0.25, 1.0, 1.0]
    lengths = [2, 4, 5, 6, 6, 3, 5, 1]
    learner, state, _ = _learner(cfg, raw, lengths)
    batch, m = learner.rollout(state.params, _prompts(2), jax.random.key(0))
    pen = np.array([_dapo_overlong_reward(n, TN, 3, 0.5) for n in lengths])
    np.testing.assert_allclose(pen, [0, -1 / 6, -1 / 3, -0.5, -0.5, 0, -1 / 3, 0])
    assert m["reward/overlong_penalty"] == pytest.approx(pen.mean(), abs=1e-6)
    assert m["reward/overall"] == pytest.approx(np.mean(np.add(raw, pen)), abs=1e-6)
    want = _verl_advantages(np.add(raw, pen), 4)
    assert np.abs(_verl_advantages(np.add(raw, 2 * pen), 4) - want).max() > 1e-2  # twice would show
    np.testing.assert_allclose(np.asarray(batch.advantages)[:, 0], want, atol=1e-5)


# ---- 5. seq-mean aggregation over rows with tokens ------------------------------------------------------------
def _verl_agg_loss(loss_mat, loss_mask, mode):
    """verl core_algos.agg_loss (dp_size 1, global sizes from the batch): seq-* modes average over seq_mask, the
    rows with at least one loss token ("exclude fully masked sequences")."""
    loss_mat, loss_mask = np.asarray(loss_mat, np.float64), np.asarray(loss_mask, np.float64)
    if mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    seq_tokens = loss_mask.sum(-1)
    seq_mask = (seq_tokens > 0).astype(np.float64)
    if mode == "seq-mean-token-mean":
        seq_losses = (loss_mat * loss_mask).sum(-1) / (seq_tokens + 1e-8)
        return (seq_losses * seq_mask).sum() / seq_mask.sum()
    seq_losses = (loss_mat * loss_mask).sum(-1)
    loss = (seq_losses * seq_mask).sum() / seq_mask.sum()
    return loss / loss_mask.shape[-1] if mode == "seq-mean-token-sum-norm" else loss


def test_seq_mean_aggregations_skip_fully_masked_rows():
    """Row 1 has no loss token: it is not a row of the mean (older verl's torch.mean over all rows would give 9 for
    seq-mean-token-sum and NaN for seq-mean-token-mean)."""
    loss = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = jnp.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    want = {
        "token-mean": 27 / 5,
        "seq-mean-token-mean": (1.5 + 8) / 2,
        "seq-mean-token-sum": (3 + 24) / 2,
        "seq-mean-token-sum-norm": (3 + 24) / 2 / 3,
    }
    for mode, value in want.items():
        num, den = aggregate(loss, mask, mode)
        assert float(num / den) == pytest.approx(value, rel=1e-6), mode
        assert _verl_agg_loss(loss, mask, mode) == pytest.approx(value, rel=1e-6), mode
    # through policy_loss, on a batch whose last row is masked out whole (a zero-signal group under DAPO)
    rng = np.random.default_rng(0)
    logp, old = -rng.uniform(0.1, 2.0, (6, 5)), -rng.uniform(0.1, 2.0, (6, 5))
    m = (rng.uniform(size=(6, 5)) < 0.7).astype(np.float64)
    m[:, 0], m[5] = 1.0, 0.0
    adv = rng.normal(size=6)
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        cfg = GRPOConfig(group_size=2, kl_coef=0.0, clip_ratio_dual=0.0, loss_agg=mode)
        num, den, _ = policy_loss(
            jnp.asarray(logp, jnp.float32),
            jnp.asarray(old, jnp.float32),
            None,
            jnp.asarray(adv, jnp.float32),
            jnp.asarray(m, jnp.float32),
            cfg,
        )
        ratio = np.exp(logp - old)
        pg = np.maximum(-adv[:, None] * ratio, -adv[:, None] * np.clip(ratio, 0.8, 1.3))
        assert float(num / den) == pytest.approx(_verl_agg_loss(pg, m, mode), rel=1e-5), mode


# ---- 6. k3 clamps ---------------------------------------------------------------------------------------------
def _verl_k3(logp, ref_logp):
    """verl kl_penalty low_var_kl and its derivative w.r.t. logp (torch.clamp passes no gradient outside)."""
    lr = np.asarray(ref_logp, np.float64) - np.asarray(logp, np.float64)
    kl = np.clip(lr, -20.0, 20.0)
    kld = np.exp(kl) - kl - 1
    grad = np.where((np.abs(lr) < 20) & (np.abs(kld) < 10), -(np.exp(kl) - 1), 0.0)
    return np.clip(kld, -10.0, 10.0), grad


def test_k3_clamps_the_log_ratio_before_exp():
    """Log-ratio +-100 (exp(100) overflows fp32): value clamped to 10, gradient 0 and finite, as verl's; with the
    value clamp off, the log-ratio clamp alone keeps k3 finite (exp(20) - 21)."""
    logp = jnp.array([[-100.5, -0.5, -0.7, -3.0]])
    ref = jnp.array([[-0.5, -100.5, -0.9, -2.0]])
    want, want_grad = _verl_k3(logp, ref)
    got, grad = jax.value_and_grad(lambda x: kl_penalty(x, ref, "k3").sum())(logp)
    np.testing.assert_allclose(np.asarray(kl_penalty(logp, ref, "k3")), want, rtol=1e-5)
    assert np.isfinite(float(got)) and np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(np.asarray(grad), want_grad, atol=1e-6)
    unclamped = np.asarray(kl_penalty(logp, ref, "k3", clamp=0.0))
    assert unclamped[0, 0] == pytest.approx(np.exp(20.0) - 21.0, rel=1e-5)
    # a masked token at log-ratio 100 must not turn the loss gradient into NaN
    cfg = GRPOConfig(group_size=2, kl_coef=0.1)
    old = jnp.array([[-100.5, -0.6, -0.7, -2.5], [-1.0, -1.0, -1.0, -1.0]])
    lp2 = jnp.concatenate([logp, old[1:] + 0.05])
    ref2 = jnp.concatenate([ref, old[1:]])
    mask = jnp.array([[0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]])

    def loss(x):
        num, den, _ = policy_loss(x, old, ref2, jnp.array([1.0, -1.0]), mask, cfg)
        return num / den

    g = np.asarray(jax.grad(loss)(lp2))
    assert np.isfinite(g).all() and g[0, 0] == 0.0
