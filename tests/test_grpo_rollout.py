"""GRPO rollouts through the real tiny Qwen2.5-VL: temperature-consistent log-probs, group-shared prefill,
stop tokens, chunked log-probs, micro-batches, and the bf16 sampler-trainer drift (measured and printed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dmx_jax.model import Qwen25VL, tiny
from dmx_jax.sampling.generate import stop_token_ids
from dmx_jax.training.grpo import GRPOLearner, repeat_prompts
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rl_vlm import completion_logprobs, make_policy_logprob, make_sampler
from dmx_jax.training.rollout import Reference
from dmx_jax.training.state import init_train_state
from tests.test_grpo_vlm import _prompt_batch

G, NEW = 4, 8


@pytest.fixture(scope="module")
def model_and_prompts():
    cfg = tiny()
    graphdef, state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    return cfg, graphdef, nnx.to_pure_dict(state), _prompt_batch(cfg, n=2)


def _batch(prompts, tokens, cmask):
    rep = jax.tree.map(jnp.asarray, repeat_prompts(prompts, G))
    return {**rep, "completion": jnp.asarray(tokens), "completion_mask": jnp.asarray(cmask)}


@pytest.mark.slow
def test_sampler_logprobs_equal_trainer_at_temperature(model_and_prompts):
    """T = 0.7 with top-k truncation: the sampler returns log softmax(logits / T) of the untruncated distribution,
    which the trainer recomputes (fp32, 1e-5), chunked or not."""
    cfg, graphdef, params, prompts = model_and_prompts
    algo = GRPOConfig(group_size=G, max_new_tokens=NEW, temperature=0.7, top_k=20)
    sampler = make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0)
    tokens, slp, cmask = sampler.sample(params, prompts, jax.random.key(1))
    model = nnx.merge(graphdef, params)
    batch = _batch(prompts, tokens, cmask)
    (lp0, ent0), (lp3, ent3) = (make_policy_logprob(algo, chunk_size=c)(model, batch, entropy=True) for c in (0, 3))
    for lp in (lp0, lp3):  # whole and chunked over positions
        np.testing.assert_allclose(np.asarray(lp), np.asarray(slp), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent3), np.asarray(ent0), atol=1e-5)
    assert np.all(np.asarray(ent0) > 0)
    at_one = completion_logprobs(model, batch)  # T = 1 is a different policy
    assert float(jnp.abs(at_one - slp).max()) > 1e-2


def test_group_shared_prefill_equals_repeated_prompts(model_and_prompts):
    """Prefill once per prompt and broadcast the cache to G samples == prefill the prompt repeated G times,
    same rng: same tokens, same log-probs."""
    cfg, graphdef, params, prompts = model_and_prompts
    algo = GRPOConfig(group_size=G, max_new_tokens=NEW, temperature=1.0)
    rng = jax.random.key(7)
    shared = make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0)
    repeated = make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0, shared_prefill=False)
    assert shared.group_size == G and repeated.group_size == 1
    a = shared.sample(params, prompts, rng)
    b = repeated.sample(params, repeat_prompts(prompts, G), rng)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a[2]), np.asarray(b[2]))
    assert len({tuple(r) for r in np.asarray(a[0])[:G]}) > 1  # the G samples of a group differ


def test_any_number_of_stop_tokens_and_micro_batches(model_and_prompts):
    cfg, graphdef, params, prompts = model_and_prompts
    algo = GRPOConfig(group_size=G, max_new_tokens=NEW)
    greedy = make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0, greedy=True)
    toks, _, _ = greedy.sample(params, prompts, jax.random.key(0))
    toks = np.asarray(toks)
    # micro-batched rollout (2 slices of the prompt batch) gives the greedy tokens of the whole batch
    micro = make_sampler(
        graphdef, dataclasses.replace(algo, rollout_micro_batches=2), stop_token_ids=(), pad_id=0, greedy=True
    )
    np.testing.assert_array_equal(np.asarray(micro.sample(params, prompts, jax.random.key(0))[0]), toks)
    # two stop ids: row 0 stops at the first of either, row G (second prompt) likewise
    stops = (int(toks[0, 2]), int(toks[G, 4]))
    stopping = make_sampler(graphdef, algo, stop_token_ids=stops, pad_id=0, greedy=True)
    t2, _, m2 = stopping.sample(params, prompts, jax.random.key(0))
    t2, m2 = np.asarray(t2), np.asarray(m2)
    for row in (0, G):
        first = int(np.flatnonzero(np.isin(toks[row], stops))[0])
        assert m2[row, : first + 1].all() and not m2[row, first + 1 :].any() and (t2[row, first + 1 :] == 0).all()


def test_stop_token_ids_from_tokenizer_and_generation_config():
    class Tok:
        im_end_id, eos_id = 5, 3

        def convert_tokens_to_ids(self, t):
            return {"<|im_end|>": 5, "<|endoftext|>": 3}.get(t)

    assert stop_token_ids(Tok(), {"eos_token_id": [5, 9]}) == (5, 3, 9)
    assert stop_token_ids(None, {"eos_token_id": 7}) == (7,)


def _bf16_step(old_logp):
    cfg = dataclasses.replace(tiny(), dtype="bfloat16")
    graphdef, state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    algo = GRPOConfig(group_size=G, max_new_tokens=NEW, temperature=1.0, kl_coef=0.02, old_logp=old_logp)

    def reward_fn(tokens, mask, prompts):
        return {"overall": jnp.mean((tokens < cfg.text.vocab_size // 8).astype(jnp.float32) * mask, axis=1)}

    tx = optax.sgd(0.0)  # no update: the ratio measures the old-log-prob source alone
    learner = GRPOLearner(
        graphdef,
        algo,
        tx,
        sampler=make_sampler(graphdef, algo, stop_token_ids=(), pad_id=0),
        reward_fn=reward_fn,
        logprob=make_policy_logprob(algo, chunk_size=4),
        reference=Reference(params, dtype="bfloat16", offload=True),
    )
    floats = [x for x in jax.tree.leaves(learner.ref_params) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert all(x.dtype == jnp.bfloat16 for x in floats)
    _, m = learner.step(init_train_state(params, tx), _prompt_batch(cfg, n=2))
    return m


@pytest.mark.slow
def test_bf16_drift_is_measured_and_trainer_old_logp_gives_ratio_one(capsys):
    """bf16 compute, bf16 reference held in host memory between uses, chunked log-probs: drift is reported, and
    with pi_old from the trainer the first ratio is 1 whatever the drift (no clipping on numerical noise)."""
    m = _bf16_step("trainer")
    with capsys.disabled():
        print(
            f"\nbf16 tiny model, {2 * G} rollouts x {NEW} tokens: sampler-trainer |dlogp| mean "
            f"{m['drift/logp_abs_mean']:.2e} max {m['drift/logp_abs_max']:.2e}; first-update ratio - 1 = "
            f"{m['ratio'] - 1:.1e}, approx_kl {m['approx_kl']:.1e}"
        )
    assert np.isfinite(m["drift/logp_abs_max"]) and m["drift/logp_abs_max"] < 0.1
    assert abs(m["ratio"] - 1) < 1e-6 and abs(m["approx_kl"]) < 1e-6
    assert m["clip_low"] + m["clip_high"] + m["clip_dual"] == 0
    assert np.isfinite(m["kl"]) and m["entropy"] > 0
