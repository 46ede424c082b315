"""GRPO learner: rollout -> rewards -> group advantages -> mu clipped-policy updates, with drift logging.

The learner is model-agnostic; it receives three functions:
- `sample_fn(params, prompts, rng) -> (tokens [N, Tn], sampler_logp [N, Tn], completion_mask [N, Tn])`
  for N = prompts x G rows (prompts already repeated G times, groups contiguous);
- `reward_fn(tokens, completion_mask, prompts) -> dict of [N] arrays` with key 'overall';
- `logprob_fn(model, batch) -> [N, Tn]` per-token log-probs of the completion under `model`, where
  `batch` is the prompt arrays plus 'completion' and 'completion_mask' (used by the trainer's loss, the
  reference model and the drift measurement, so sampler and trainer are compared on the same numbers).
Each rollout batch is a pytree of static-shape arrays; π_old is the sampler's log-probs (temperature 1,
untruncated), so the first inner iteration's importance ratio measures sampler-trainer drift.
With `place` (e.g. experiments.stages.place_batch) the repeated prompt batch becomes global arrays sharded
over the mesh's batch axes, so sampling, rewards, log-probs and the update run data-parallel, on one host
or many (each process may hold only its own prompt rows). Every step logs its wall-clock breakdown:
time/rollout_s, time/reward_s, time/logprob_s (trainer + reference) and time/update_s (all inner
iterations), each phase synchronised before the clock is read.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmx_jax.training.grpo_loss import GRPOConfig, group_advantages, group_has_signal, policy_loss
from dmx_jax.training.state import TrainState
from dmx_jax.training.step import make_train_step


def repeat_prompts(prompts: dict, group_size: int) -> dict:
    """Each prompt row repeated G times, groups contiguous: [P, ...] -> [P*G, ...]."""
    return jax.tree.map(lambda x: np.repeat(np.asarray(x), group_size, axis=0), prompts)


def make_policy_update(graphdef: nnx.GraphDef, cfg: GRPOConfig, tx: optax.GradientTransformation,
                       logprob_fn: Callable, *, grad_accum: int = 1, compute_dtype=None):
    """Pure update step(state, rollout) -> (state, metrics) minimising the GRPO objective."""

    def loss_fn(model, batch, rng):  # noqa: ARG001 - deterministic objective
        logp = logprob_fn(model, batch)
        num, den, m = policy_loss(logp, batch["old_logp"], batch.get("ref_logp"), batch["advantages"],
                                  batch["completion_mask"], cfg)
        return num, den, m

    return make_train_step(graphdef, loss_fn, tx, grad_accum=grad_accum, compute_dtype=compute_dtype)


class GRPOLearner:
    """Host orchestration of one GRPO iteration per call; each piece inside is jitted."""

    def __init__(self, graphdef: nnx.GraphDef, cfg: GRPOConfig, tx: optax.GradientTransformation, *,
                 sample_fn: Callable, reward_fn: Callable, logprob_fn: Callable, ref_params: Any = None,
                 seed: int = 0, grad_accum: int = 1, compute_dtype=None,
                 place: Callable[[dict], dict] | None = None):
        self.cfg, self.graphdef = cfg, graphdef
        self.place = place              # host rollout batch -> global arrays on the mesh (None: default device)
        self.sample_fn, self.reward_fn = sample_fn, reward_fn
        # own copy: the policy's buffers are donated to the update step
        self.ref_params = None if ref_params is None else jax.tree.map(lambda x: jnp.array(x, copy=True), ref_params)
        self.seed = seed
        self._update = jax.jit(make_policy_update(graphdef, cfg, tx, logprob_fn, grad_accum=grad_accum,
                                                  compute_dtype=compute_dtype), donate_argnums=(0,))
        self._logp = jax.jit(lambda params, batch: logprob_fn(nnx.merge(graphdef, params), batch))

    def rollout(self, params: Any, prompts: dict, rng: jax.Array) -> tuple[dict, dict]:
        cfg = self.cfg
        rep = repeat_prompts(prompts, cfg.group_size)
        if self.place is not None:      # sharded over the mesh's batch axes: rollouts are data-parallel
            rep = self.place(rep)
        t0 = time.perf_counter()
        tokens, sampler_logp, cmask = jax.block_until_ready(self.sample_fn(params, rep, rng))
        t1 = time.perf_counter()
        rewards = jax.block_until_ready(self.reward_fn(tokens, cmask, rep))
        t2 = time.perf_counter()
        overall = jnp.asarray(rewards["overall"], jnp.float32)
        adv = group_advantages(overall, cfg.group_size, scale_by_std=cfg.scale_by_std, eps=cfg.std_eps)
        cmask = jnp.asarray(cmask, jnp.float32)
        if cfg.dynamic_sampling:  # static shapes: zero-signal groups are masked out, not dropped
            cmask = cmask * group_has_signal(overall, cfg.group_size)[:, None]
        batch = {**jax.tree.map(jnp.asarray, rep), "completion": jnp.asarray(tokens),
                 "completion_mask": cmask, "old_logp": jnp.asarray(sampler_logp), "advantages": adv}
        trainer_logp = self._logp(params, batch)
        drift = jnp.abs(trainer_logp - batch["old_logp"]) * cmask
        n_tok = jnp.maximum(cmask.sum(), 1.0)
        if self.ref_params is not None and cfg.kl_coef:
            batch["ref_logp"] = self._logp(self.ref_params, batch)
        jax.block_until_ready((trainer_logp, batch.get("ref_logp")))
        t3 = time.perf_counter()
        metrics = {f"reward/{k}": float(jnp.mean(jnp.asarray(v))) for k, v in rewards.items()}
        metrics.update({
            "reward/std_within_group": float(jnp.mean(jnp.std(overall.reshape(-1, cfg.group_size), axis=1))),
            "frac_zero_std_groups": float(1.0 - jnp.mean(group_has_signal(overall, cfg.group_size))),
            "drift/logp_abs_mean": float(drift.sum() / n_tok), "drift/logp_abs_max": float(drift.max()),
            "completion_len_mean": float(jnp.asarray(tokens.shape[1] if cmask is None else cmask.sum(1)).mean()),
            "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/logprob_s": t3 - t2,
        })
        return batch, metrics

    def step(self, state: TrainState, prompts: dict) -> tuple[TrainState, dict]:
        """One GRPO iteration: sample with the current policy, then num_iterations updates."""
        rng = jax.random.fold_in(jax.random.key(self.seed), int(state.step))
        batch, metrics = self.rollout(state.params, prompts, rng)
        t0 = time.perf_counter()
        for _ in range(self.cfg.num_iterations):
            state, m = self._update(state, batch)
        jax.block_until_ready(m)
        metrics["time/update_s"] = time.perf_counter() - t0
        tokens = jnp.maximum(m.pop("tokens"), 1.0)
        for k in list(m):
            if k.endswith("_sum"):
                metrics[k[:-4]] = float(m.pop(k) / tokens)
        metrics.update({k: float(v) for k, v in m.items()})
        return state, metrics
