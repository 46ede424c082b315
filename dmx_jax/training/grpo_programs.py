"""The GRPO step's device programs, built in one place: the rollout's sampler, the completion log-prob passes
(policy with entropy, reference) and the policy update. The learner (dmx_jax.training.grpo) runs them and the
fit check (experiments.aot) compiles the very same objects for a slice, so what is checked is what runs.

N = prompts x G rows, groups contiguous; Tn = completion slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dmx_jax.model.lora import disable_adapters, with_adapters
from dmx_jax.training.grpo_loss import GRPOConfig, policy_loss
from dmx_jax.training.optim import Trainable
from dmx_jax.training.rollout import PolicyLogprob, Rollout, Sampler
from dmx_jax.training.state import TrainState, cast_floating
from dmx_jax.training.step import MeshProgram, jit_train_step, make_train_step


def group_strided_split(tree: Any, k: int, group_size: int) -> Any:
    """[N, ...] -> [k, N/k, ...]: group g goes to slice g % k (groups kept whole, block-sharded rows stay local)."""

    def one(x):
        n = x.shape[0]
        if n % (k * group_size):
            raise ValueError(f"{n} rows do not split into {k} slices of whole groups of {group_size}")
        x = x.reshape((n // (k * group_size), k, group_size) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1).reshape((k, n // k) + x.shape[3:])

    return jax.tree.map(one, tree)


def group_strided_join(x: jax.Array, group_size: int) -> jax.Array:
    """Inverse of group_strided_split for one array [k, N/k, ...] -> [N, ...]."""
    k, m = x.shape[:2]
    x = x.reshape((k, m // group_size, group_size) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((k * m,) + x.shape[3:])


def map_row_slices(fn: Callable, batch: Any, k: int) -> Any:
    """fn(batch) run over k sequential row slices (lax.map of group_strided_split with groups of 1) and joined
    back in row order; k <= 1 runs fn once. The log-prob passes' micro-batching (GRPOConfig.logprob_micro_batches)."""
    if k <= 1:
        return fn(batch)
    return jax.tree.map(lambda o: group_strided_join(o, 1), jax.lax.map(fn, group_strided_split(batch, k, 1)))


def make_policy_update(
    graphdef: nnx.GraphDef,
    cfg: GRPOConfig,
    tx: optax.GradientTransformation,
    logprob: PolicyLogprob,
    *,
    grad_accum: int = 1,
    compute_dtype=None,
    trainable: Trainable | None = None,
):
    """Pure update step(state, mini_batch: Rollout) -> (state, metrics) minimising the GRPO objective (one
    optimizer update of the `trainable` parameters, see make_train_step; state.step is left to the learner, which
    counts rollout steps). Entropy is computed in the update when the bonus needs it or pi_old is 'current' (the
    rollout then ran no policy pass to log it)."""
    if cfg.length_buckets > 1 and not cfg.norm_length:  # a cut batch normalises by the full completion length
        cfg = dataclasses.replace(cfg, norm_length=cfg.max_new_tokens)
    with_entropy = logprob.with_entropy and (cfg.entropy_coeff > 0 or cfg.old_logp == "current")
    if cfg.entropy_coeff > 0 and not logprob.with_entropy:
        raise ValueError("grpo.entropy_coeff > 0 needs a log-prob function that computes the entropy")

    def loss_fn(model, batch: Rollout, rng):
        logp, entropy = logprob(model, batch.inputs, entropy=with_entropy)
        old = jax.lax.stop_gradient(logp) if batch.old_logp is None else batch.old_logp
        is_weights = None
        if cfg.tis_cap:
            is_weights = jnp.minimum(jnp.exp(old - batch.sampler_logp), cfg.tis_cap)
        num, den, metrics = policy_loss(
            logp, old, batch.ref_logp, batch.advantages, batch.loss_mask, cfg, is_weights=is_weights, entropy=entropy
        )
        if batch.old_logp is None:  # no pi_old pass: the sampler-trainer drift is measured here
            metrics["drift/logp_abs_mean_sum"] = jnp.sum(jnp.abs(old - batch.sampler_logp) * batch.loss_mask)
        if is_weights is not None:
            metrics["tis/weight_sum"] = jnp.sum(is_weights * batch.loss_mask)
            metrics["tis/capped_sum"] = jnp.sum((is_weights >= cfg.tis_cap) * batch.loss_mask)
        return num, den, metrics

    return make_train_step(
        graphdef,
        loss_fn,
        tx,
        grad_accum=grad_accum,
        compute_dtype=compute_dtype,
        counts_step=False,
        trainable=trainable,
    )


@dataclasses.dataclass(frozen=True)
class GRPOPrograms:
    """The programs of one GRPO step.

    sampler: the rollout (sample(params, prompts, rng), jitted inside: prefill + decode loop).
    policy_logprob(params, inputs) -> (logp [N, Tn], entropy [N, Tn]; zeros when the log-prob computes none).
    reference_logprob(params, inputs, adapters) -> logp [N, Tn] under the reference: reference_kind 'params' takes
    the reference's own parameters (adapters None); 'base' the policy's, its LoRA adapters switched off inside the
    program; 'adapters' the policy's with `adapters` (the stage's starting adapter values) swapped in.
    update(state, mini_batch: Rollout) -> (state, metrics): the state donated, in and out in its shardings.
    relayout(params) -> the weights the sampler decodes with: the compute-dtype copy in the decoding layout, made
    once per rollout phase; None decodes the train parameters themselves."""

    sampler: Sampler
    policy_logprob: Any  # jax.jit
    reference_logprob: Any  # jax.jit
    update: MeshProgram
    relayout: Any = None  # jax.jit, or None
    reference_kind: str = "params"  # params | base | adapters (see Reference.kind)


def make_grpo_programs(
    graphdef: nnx.GraphDef,
    cfg: GRPOConfig,
    tx: optax.GradientTransformation,
    sampler: Sampler,
    logprob: PolicyLogprob,
    *,
    grad_accum: int = 1,
    compute_dtype=None,
    trainable: Trainable | None = None,
    state_shardings: TrainState | None = None,
    sample_shardings: Any = None,
    reference_kind: str = "params",
) -> GRPOPrograms:
    """The GRPO step's programs. state_shardings: the train state's layout, kept through the update (so each
    program compiles once per run: left to the partitioner, the update's output layout differs from its
    input's on an FSDP mesh and step 2 compiles the update and the log-prob pass again). The log-prob passes run
    `cfg.logprob_micro_batches` sequential row slices and cast the parameters to `compute_dtype` inside.
    sample_shardings (see grpo.sampling_shardings): the decoding layout of the weights, which `relayout` casts to
    the compute dtype and re-lays out into; None: no re-layout."""
    k = cfg.logprob_micro_batches

    def logp(params, inputs, with_entropy):
        model = nnx.merge(graphdef, cast_floating(params, compute_dtype))

        def run(b):
            lp, ent = logprob(model, b, entropy=with_entropy)
            return lp, (jnp.zeros(lp.shape, jnp.float32) if ent is None else ent)

        return map_row_slices(run, inputs, k)

    def policy_logprobs(params, inputs):
        return logp(params, inputs, logprob.with_entropy)

    def reference_logprobs(params, inputs, adapters):
        if reference_kind == "base":
            params = disable_adapters(params)
        elif reference_kind == "adapters":
            params = with_adapters(params, adapters)
        return logp(params, inputs, False)[0]

    update = make_policy_update(
        graphdef, cfg, tx, logprob, grad_accum=grad_accum, compute_dtype=compute_dtype, trainable=trainable
    )
    return GRPOPrograms(
        sampler=sampler,
        policy_logprob=jax.jit(policy_logprobs),
        reference_logprob=jax.jit(reference_logprobs),
        update=jit_train_step(update, state_shardings),
        relayout=None
        if sample_shardings is None
        else jax.jit(lambda params: cast_floating(params, compute_dtype), out_shardings=sample_shardings),
        reference_kind=reference_kind,
    )
