"""GRPO end to end on the toy LM: mean reward rises; sampler-vs-trainer drift is ~0; variants run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dmx_jax.sampling.select import select_tokens
from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rollout import PolicyLogprob, Reference, Sampler
from dmx_jax.training.state import init_train_state
from tests.helpers.toy_lm import ToyLM

TARGET, TN = 7, 6


def _toy_fns(graphdef):
    def full_logits(model, prompt, completion):
        ids = jnp.concatenate([prompt, completion], axis=1)
        return model.hidden(ids) @ model.lm_head.kernel[...]

    @jax.jit
    def sample(params, prompt, rng):
        model = nnx.merge(graphdef, params)
        comp = jnp.zeros((prompt.shape[0], TN), jnp.int32)
        logps = jnp.zeros((prompt.shape[0], TN))
        for t in range(TN):  # no KV cache: the toy recomputes the prefix
            logits = full_logits(model, prompt, comp)[:, prompt.shape[1] - 1 + t]
            tok, lp = select_tokens(logits, jax.random.fold_in(rng, t), temperature=1.0)
            comp, logps = comp.at[:, t].set(tok), logps.at[:, t].set(lp)
        return comp, logps

    def sample_fn(params, rep, rng):
        comp, lp = sample(params, jnp.asarray(rep["prompt"]), rng)
        return comp, lp, jnp.ones_like(comp, jnp.float32)

    def logprob_fn(model, batch):
        logits = full_logits(model, batch["prompt"], batch["completion"])
        p = batch["prompt"].shape[1]
        lp = jax.nn.log_softmax(logits[:, p - 1 : -1].astype(jnp.float32), -1)
        return jnp.take_along_axis(lp, batch["completion"][..., None], -1)[..., 0]

    def reward_fn(tokens, mask, rep):
        return {"overall": jnp.mean((tokens == TARGET).astype(jnp.float32), axis=1)}

    return sample_fn, logprob_fn, reward_fn


def _run(cfg, steps):
    graphdef, st = nnx.split(ToyLM(seed=1))
    params = nnx.to_pure_dict(st)
    tx = optax.adam(3e-2)
    sample_fn, logprob_fn, reward_fn = _toy_fns(graphdef)
    learner = GRPOLearner(
        graphdef,
        cfg,
        tx,
        sampler=Sampler(sample_fn),
        reward_fn=reward_fn,
        logprob=PolicyLogprob(logprob_fn),
        reference=Reference(params),
        seed=0,
    )
    state = init_train_state(params, tx)
    prompts = {"prompt": np.random.default_rng(0).integers(0, 32, size=(4, 5)).astype(np.int32)}
    history = []
    for _ in range(steps):
        state, m = learner.step(state, prompts)
        history.append(m)
    return history


def test_grpo_raises_mean_reward_and_logs_zero_drift():
    hist = _run(GRPOConfig(group_size=4, kl_coef=0.01, max_new_tokens=TN), steps=12)
    first = np.mean([h["reward/overall"] for h in hist[:2]])
    last = np.mean([h["reward/overall"] for h in hist[-2:]])
    assert last > first + 0.2, [h["reward/overall"] for h in hist]
    # same graph, same params: sampler log-probs equal trainer log-probs up to fp32 round-off
    assert max(h["drift/logp_abs_max"] for h in hist) < 1e-4
    assert all(abs(h["ratio"] - 1.0) < 1e-3 for h in hist)  # mu=1: ratio is 1 at the first update


def test_variants_run_as_config_presets():
    for cfg in (GRPOConfig.dr_grpo(group_size=4), GRPOConfig.dapo(group_size=4, num_iterations=2)):
        hist = _run(cfg, steps=2)
        assert np.isfinite([h["reward/overall"] for h in hist]).all()


class _Prompts:
    """A stateful prompt iterator (the loop's protocol): batch i is a fixed function of i."""

    def __init__(self, n=4):
        self.i, self.n = 0, n

    def __next__(self):
        rng = np.random.default_rng(self.i)
        self.i += 1
        return {"prompt": rng.integers(0, 32, size=(self.n, 5)).astype(np.int32)}, {}

    def get_state(self):
        return self.i

    def set_state(self, s):
        self.i = s


def _loop(step_fn, state, data, num_steps):
    """The stage loop's contract (dmx_jax.training.loop.train_loop): run until state.step == num_steps."""
    steps, m = 0, {}
    while int(state.step) < num_steps:
        state, m = step_fn(state, next(data)[0])
        steps += 1
    return state, {"steps_run": steps, "last_metrics": m}


def _learner(cfg, **kw):
    graphdef, st = nnx.split(ToyLM(seed=1))
    params = nnx.to_pure_dict(st)
    tx = optax.adam(3e-2)
    sample_fn, logprob_fn, reward_fn = _toy_fns(graphdef)
    learner = GRPOLearner(
        graphdef,
        cfg,
        tx,
        sampler=Sampler(kw.pop("wrap_sampler", lambda f: f)(sample_fn)),
        reward_fn=kw.pop("reward_fn", reward_fn),
        logprob=PolicyLogprob(logprob_fn),
        reference=Reference(params),
        seed=0,
        **kw,
    )
    return learner, init_train_state(params, tx)


def test_resume_with_several_updates_per_step_is_exact():
    """mu = 2 epochs x 2 mini-batches = 4 optimizer updates per loop step: state.step counts loop steps, so a run
    stopped after 2 steps and resumed by a fresh learner does exactly the updates of an uninterrupted run."""
    cfg = GRPOConfig(group_size=4, num_iterations=2, ppo_mini_batch_size=2, kl_coef=0.01, max_new_tokens=TN)
    learner, state = _learner(cfg)
    full, summary = _loop(learner.step, state, _Prompts(), 4)
    assert summary["steps_run"] == 4 and int(full.step) == 4
    assert int(full.opt_state[0].count) == 4 * 2 * 2
    assert summary["last_metrics"]["updates"] == 4.0
    _, state = _learner(cfg)  # the learner keeps no step state: one instance serves both runs
    data = _Prompts()
    half, _ = _loop(learner.step, state, data, 2)
    saved = jax.tree.map(np.array, half), data.get_state()  # what a checkpoint holds
    data = _Prompts()
    data.set_state(saved[1])
    resumed, summary = _loop(learner.step, jax.tree.map(jnp.asarray, saved[0]), data, 4)
    assert summary["steps_run"] == 2 and int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def test_mini_batches_match_manual_updates():
    """Two mini-batches = two optimizer updates, each normalised by its own groups' (sum, count)."""
    cfg = GRPOConfig(group_size=4, ppo_mini_batch_size=2, kl_coef=0.0, max_new_tokens=TN)
    learner, state = _learner(cfg)
    prompts = next(_Prompts())[0]
    rng = jax.random.fold_in(jax.random.key(0), 0)
    batch, _ = learner.rollout(state.params, prompts, rng)
    manual = jax.tree.map(jnp.array, state)
    for groups in ([0, 2], [1, 3]):  # group-strided: group g in mini-batch g % 2
        rows = np.concatenate([np.arange(4) + 4 * g for g in groups])
        manual, _ = learner._update(manual, jax.tree.map(lambda x: x[rows], batch))
    stepped, m = learner.step(state, prompts)
    assert m["updates"] == 2.0 and int(stepped.step) == 1
    for a, b in zip(jax.tree.leaves(manual.params), jax.tree.leaves(stepped.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def test_dynamic_sampling_refills_groups_with_signal():
    """Prompts starting with an even token get a constant reward (no signal); refill batches supply groups with
    signal until the static batch of 4 groups is full of them."""

    def reward_fn(tokens, mask, rep):
        live = (rep["prompt"][:, 0] % 2 == 1).astype(jnp.float32)
        return {"overall": live * jnp.mean((tokens == TARGET).astype(jnp.float32) + 0.01 * tokens, axis=1)}

    first = np.array([[2, 1, 1, 1, 1], [4, 1, 1, 1, 1], [3, 1, 1, 1, 1], [6, 1, 1, 1, 1]], np.int32)
    extra = iter([np.array([[5, 2, 2, 2, 2], [8, 2, 2, 2, 2], [7, 2, 2, 2, 2], [9, 2, 2, 2, 2]], np.int32)])
    cfg = GRPOConfig.dapo(group_size=4, max_new_tokens=TN, dynamic_sampling_max_tries=3, overlong_filtering=False)
    learner, state = _learner(cfg, reward_fn=reward_fn, refill=lambda: {"prompt": next(extra)})
    batch, m = learner.rollout(state.params, {"prompt": first}, jax.random.key(3))
    assert batch.completion.shape == (16, TN)  # static: 4 groups x G
    firsts = np.asarray(batch.inputs["prompt"][::4, 0])
    assert firsts.tolist() == [3, 5, 7, 9]  # 1 from the first batch, 3 refilled, in order
    assert m["dynamic_sampling/rollouts"] == 2.0 and m["frac_zero_std_groups"] == 0.75
    assert float(np.asarray(batch.loss_mask).sum()) == 16 * TN
    # without refill the static batch keeps its zero-signal groups, masked out of the loss
    learner, state = _learner(cfg, reward_fn=reward_fn)
    batch, m = learner.rollout(state.params, {"prompt": first}, jax.random.key(3))
    lm = np.asarray(batch.loss_mask).reshape(4, 4, TN)
    assert lm[2].all() and not lm[[0, 1, 3]].any()
    assert m["completion_len_mean"] == TN  # measured before the mask


@pytest.mark.slow
def test_micro_batched_logprob_pass_and_sampler_old_logp_option():
    """logprob_micro_batches slices the pi_old / reference passes without changing them; old_logp='sampler'
    reuses the rollout's log-probs (drift still reported)."""
    cfg = GRPOConfig(group_size=4, kl_coef=0.01, max_new_tokens=TN)
    prompts, rng = next(_Prompts())[0], jax.random.key(5)
    learner, state = _learner(cfg)
    whole, m = learner.rollout(state.params, prompts, rng)
    learner, _ = _learner(dataclasses.replace(cfg, logprob_micro_batches=4))
    sliced, _ = learner.rollout(state.params, prompts, rng)
    for k in ("old_logp", "ref_logp"):
        np.testing.assert_allclose(np.asarray(getattr(sliced, k)), np.asarray(getattr(whole, k)), atol=1e-6)
    learner, _ = _learner(dataclasses.replace(cfg, old_logp="sampler"))
    samp, m2 = learner.rollout(state.params, prompts, rng)
    assert float(jnp.abs(samp.old_logp - whole.old_logp).max()) == pytest.approx(m2["drift/logp_abs_max"])
    assert m["entropy"] == 0.0  # the toy log-prob function computes no entropy
    assert m["completion_len_max"] == TN and m["truncation_rate"] == 1.0


def _stopping_early(sample_fn):
    """Rows end after 1, 2 or 3 of the TN slots (the tokens and log-probs after the end are padding)."""

    def sample(params, rep, rng):
        comp, lp, _ = sample_fn(params, rep, rng)
        lengths = 1 + jnp.arange(comp.shape[0]) % 3
        mask = (jnp.arange(TN)[None] < lengths[:, None]).astype(jnp.float32)
        return jnp.where(mask > 0, comp, 0), lp * mask, mask

    return sample


@pytest.mark.parametrize(
    "cfg",
    [
        GRPOConfig(group_size=4, kl_coef=0.01, num_iterations=2, ppo_mini_batch_size=2, max_new_tokens=TN),
        GRPOConfig.dr_grpo(group_size=4, kl_coef=0.01, max_new_tokens=TN),  # normalised by max_new_tokens
    ],
    ids=["grpo", "dr_grpo"],
)
def test_length_buckets_cut_padding_slots_without_changing_the_run(cfg):
    """length_buckets cuts the completion slots after the longest completion (3 of 6 here) before the log-prob
    passes and the updates: the same losses, metrics and parameters as the uncut run."""
    runs = {}
    for k in (1, 3, TN):
        learner, state = _learner(dataclasses.replace(cfg, length_buckets=k), wrap_sampler=_stopping_early)
        state, summary = _loop(learner.step, state, _Prompts(), 3)
        runs[k] = state, summary["last_metrics"]
    assert [runs[k][1]["completion_slots"] for k in (1, 3, TN)] == [TN, 4, 3]
    full_state, full_metrics = runs[1]
    for k in (3, TN):
        state, metrics = runs[k]
        for name, value in full_metrics.items():
            if not name.startswith("time/") and name != "completion_slots":
                assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (k, name)
        for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)
    with pytest.raises(ValueError, match="length_buckets"):
        GRPOConfig(max_new_tokens=8, length_buckets=9)
