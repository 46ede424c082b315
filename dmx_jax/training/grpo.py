"""GRPO learner: rollout -> rewards -> log-prob passes -> advantages -> PPO epochs x mini-batches of updates.

The learner is model-agnostic; it receives (records in dmx_jax.training.rollout):
- a `Sampler`: sample(params, prompts, rng) -> (tokens [N, Tn], sampler_logp [N, Tn], completion_mask [N, Tn]) for
  N = prompts x G rows, groups contiguous; with Sampler.group_size == G it receives the P prompts once and shares
  one prefill per group, otherwise the prompts arrive repeated G times;
- `reward_fn(tokens, completion_mask, prompts) -> dict of [N] arrays` with key 'overall' (prompts repeated);
- a `PolicyLogprob`: per-token log-probs [N, Tn] of the completion under a model at the sampling temperature
  (rl_vlm.make_policy_logprob), and the entropy when it has one.

pi_old (`GRPOConfig.old_logp`): "trainer" recomputes it with the rollout's weights (EasyR1/verl), so the first
ratio is exactly 1 whatever the sampler's numerics; "sampler" reuses the sampler's log-probs; "current" skips the
pass and takes stop_gradient of the update's own log-probs, exact on-policy (one epoch, one mini-batch: verl's
shortcut). Drift |log pi_sampler - log pi_trainer| is logged every step either way, and `tis_cap` corrects it
by truncated importance sampling. Each rollout batch is a `Rollout` of static-shape arrays; with
`length_buckets` > 1 its completion slots are cut, before the log-prob passes and the updates, to the bucket
that holds the longest completion (the sampler stops once every row has finished, so short answers leave whole
buckets of padding; each bucket length compiles its programs once).

Advantages come after the log-prob passes, so a KL term in the reward (kl_reward_coef, verl use_kl_in_reward)
sees pi_old and the reference; `adv_estimator` picks grpo, rloo or reinforce_plus_plus.

Updates: `num_iterations` (= ppo_epochs) passes over the batch, each split into mini-batches of
`ppo_mini_batch_size` prompt groups (group-strided, so a batch sharded in blocks stays local); each mini-batch
is one optimizer update, normalised exactly by its own (sum, count) and micro-batched by grad_accum.
`state.step` counts rollout steps (the loop's step), not optimizer updates, so checkpoints and a resumed run
see the same step numbers and the same random streams whatever num_iterations and mini-batches are; the
optimizer's own update count lives in its state.

DAPO: dynamic sampling keeps the groups whose rewards differ and refills from further prompt batches
(`refill()`, up to dynamic_sampling_max_tries rollouts); the batch keeps its static P * G rows, groups without
signal filling the remainder with loss_mask 0. Overlong filtering zeroes the loss mask of truncated rows;
the soft overlong penalty is added to 'overall' before advantages.

With `place` (e.g. experiments.stages.place_batch) prompt batches become global arrays sharded over the mesh's
batch axes, so sampling, rewards, log-probs and the update run data-parallel. With `sample_shardings` (see
`sampling_shardings`) the weights are re-laid out once per rollout phase for decoding (no FSDP gather per
token). Every step logs time/rollout_s, time/reward_s, time/logprob_s (trainer + reference) and time/update_s.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dmx_jax.sharding import host_array, rules
from dmx_jax.training.grpo_loss import (
    GRPOConfig,
    adaptive_kl_coef,
    completion_bucket,
    compute_advantages,
    group_has_signal,
    kl_penalty,
    mini_batch_rows,
    overlong_penalty,
    truncated_rows,
)
from dmx_jax.training.grpo_programs import GRPOPrograms, group_strided_split, make_grpo_programs
from dmx_jax.training.optim import Trainable
from dmx_jax.training.rollout import PolicyLogprob, Reference, Rollout, Sampler
from dmx_jax.training.state import TrainState, cast_floating


def repeat_prompts(prompts: dict, group_size: int) -> dict:
    """Each prompt row repeated G times, groups contiguous: [P, ...] -> [P*G, ...]."""
    return jax.tree.map(lambda x: np.repeat(np.asarray(x), group_size, axis=0), prompts)


def sampling_shardings(params: Any, mesh) -> Any:
    """Decoding layout of the weights from the rule table (SAMPLE_RULES: no FSDP on weights)."""
    return rules.tree_shardings(params, mesh, rules.SAMPLE_RULES)


def initial_aux(cfg: GRPOConfig) -> dict:
    """The GRPO stage's train-state aux: the adaptive in-reward KL coefficient's starting value, else nothing."""
    return {"kl_reward_coef": jnp.float32(cfg.kl_reward_coef)} if cfg.kl_ctrl == "adaptive" else {}


def rollout_loss_mask(batch: Rollout, cfg: GRPOConfig) -> jax.Array:
    """completion_mask less the groups without reward signal (dynamic sampling: the static batch keeps them, with
    no loss) and the truncated rows (overlong filtering)."""
    loss_mask = batch.completion_mask
    if cfg.dynamic_sampling:
        loss_mask = loss_mask * group_has_signal(batch.scores, cfg.group_size)[:, None]
    if cfg.overlong_filtering:
        loss_mask = loss_mask * (1.0 - batch.truncated)[:, None]
    return loss_mask


def trim_completions(batch: Rollout, length: int) -> Rollout:
    """The batch with its completion-slot arrays ([N, Tn]: completion, completion_mask, sampler_logp, loss_mask)
    cut to their first `length` slots; the slots cut hold no completion token (GRPOConfig.length_buckets)."""
    cut = lambda x: x[:, :length]
    inputs = {**batch.inputs, "completion": cut(batch.completion), "completion_mask": cut(batch.completion_mask)}
    return batch.replace(inputs=inputs, sampler_logp=cut(batch.sampler_logp), loss_mask=cut(batch.loss_mask))


def _device_to_host(tree: Any) -> tuple[Any, Any]:
    """(host copy, shardings) of a device tree; host memory kind when the backend has one, else numpy."""
    shardings = jax.tree.map(lambda x: x.sharding, tree)
    try:
        host = jax.device_put(tree, jax.tree.map(lambda s: s.with_memory_kind("pinned_host"), shardings))
    except Exception:
        if not all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
            return tree, None  # multi-process without host memory kinds: stay on device
        host = jax.device_get(tree)
    return host, shardings


class GRPOLearner:
    """Host orchestration of one GRPO iteration per call; each piece inside is jitted.

    programs: the step's device programs (make_grpo_programs; the stage runner and the fit check build them with
    experiments.stage_programs.grpo_programs); without them the learner builds them from tx, sampler, logprob,
    grad_accum, compute_dtype, trainable, state_shardings and sample_shardings (the weights' decoding layout, see
    sampling_shardings). trainable: the parameters the update differentiates (the optimizer's rule, see
    make_train_step). reference: the KL reference (a Reference record); refill: () -> another prompt batch of the
    same shape, for dynamic sampling."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        cfg: GRPOConfig,
        tx: optax.GradientTransformation | None = None,
        *,
        reward_fn: Callable,
        sampler: Sampler | None = None,
        logprob: PolicyLogprob | None = None,
        programs: GRPOPrograms | None = None,
        reference: Reference | None = None,
        seed: int = 0,
        grad_accum: int = 1,
        compute_dtype=None,
        place: Callable[[dict], dict] | None = None,
        refill: Callable[[], dict] | None = None,
        sample_shardings: Any = None,
        mesh: Any = None,
        state_shardings: TrainState | None = None,
        trainable: Trainable | None = None,
    ):
        reference = reference or Reference()
        self.mesh = mesh  # every program runs under it, so the activation constraints apply
        self.cfg, self.graphdef = cfg, graphdef
        self.place = place  # host rollout batch -> global arrays on the mesh (None: default device)
        self.reference_kind = reference.kind if cfg.needs_reference else "params"
        if programs is None:
            if tx is None or sampler is None or logprob is None:
                raise ValueError("GRPOLearner needs programs=, or tx, sampler= and logprob= to build them")
            programs = make_grpo_programs(
                graphdef,
                cfg,
                tx,
                sampler,
                logprob,
                grad_accum=grad_accum,
                compute_dtype=compute_dtype,
                trainable=trainable,
                state_shardings=state_shardings,
                sample_shardings=sample_shardings,
                reference_kind=self.reference_kind,
            )
        elif programs.reference_kind != self.reference_kind:
            raise ValueError(
                f"GRPOLearner: programs built for a {programs.reference_kind!r} reference, the learner's reference "
                f"is {self.reference_kind!r}"
            )
        self.programs = programs
        sampler = programs.sampler
        self.sampler, self.reward_fn, self.refill = sampler, reward_fn, refill
        self.shared_prefill = sampler.group_size == cfg.group_size
        self.ref_params, self._ref_shardings, self.ref_adapters = None, None, None
        if self.reference_kind == "adapters":  # own copy of the starting adapters (the policy's are donated)
            self.ref_adapters = jax.tree.map(lambda x: jnp.array(x, copy=True), reference.adapters)
        elif cfg.needs_reference and self.reference_kind == "params":
            if reference.params is None:
                raise ValueError(
                    "grpo.kl_coef / kl_reward_coef > 0 need a reference: Reference(params=...), or for a model "
                    "with LoRA adapters Reference(adapters=adapters_of(starting params)) / Reference(adapters_off=True)"
                )
            # own copy (the policy's buffers are donated to the update step), in the reference dtype
            ref = jax.tree.map(lambda x: jnp.array(x, copy=True), reference.params)
            ref = cast_floating(ref, None if reference.dtype is None else jnp.dtype(reference.dtype))
            self.ref_params, self._ref_shardings = _device_to_host(ref) if reference.offload else (ref, None)
        self.seed = seed
        self._update, self._logp_policy, self._logp_ref = (
            programs.update,
            programs.policy_logprob,
            programs.reference_logprob,
        )
        self._split = jax.jit(group_strided_split, static_argnums=(1, 2))
        self._take_rows = jax.jit(
            lambda parts, idx: jax.tree.map(lambda *xs: jnp.take(jnp.concatenate(xs), idx, axis=0), *parts)
        )
        self._loss_mask = jax.jit(functools.partial(rollout_loss_mask, cfg=cfg))
        self._trim = jax.jit(trim_completions, static_argnums=1)
        self._advantages = jax.jit(
            lambda scores, mask, token_rewards: compute_advantages(scores, mask, cfg, token_rewards)
        )

        def advance(state):
            return state.replace(step=state.step + 1)

        self._advance = jax.jit(
            advance,
            donate_argnums=(0,),
            **(
                {}
                if state_shardings is None
                else {"in_shardings": (state_shardings,), "out_shardings": state_shardings}
            ),
        )

    # -- rollout ---------------------------------------------------------------------------------------------
    def _sample_and_score(self, params, prompts: dict, rng: jax.Array) -> tuple[Rollout, dict, float, float]:
        cfg = self.cfg
        rep = repeat_prompts(prompts, cfg.group_size)
        if self.place is not None:  # sharded over the mesh's batch axes: rollouts are data-parallel
            rep = self.place(rep)
        src = rep
        if self.shared_prefill:
            src = self.place(dict(prompts)) if self.place is not None else prompts
        t0 = time.perf_counter()
        tokens, sampler_logp, cmask = jax.block_until_ready(self.sampler.sample(params, src, rng))
        t1 = time.perf_counter()
        rewards = dict(jax.block_until_ready(self.reward_fn(tokens, cmask, rep)))
        t2 = time.perf_counter()
        cmask = jnp.asarray(cmask, jnp.float32)
        overall = jnp.asarray(rewards["overall"], jnp.float32)
        if cfg.overlong_buffer_len:
            pen = overlong_penalty(
                cmask.sum(axis=1), tokens.shape[1], cfg.overlong_buffer_len, cfg.overlong_penalty_factor
            )
            rewards["overlong_penalty"] = pen
            overall = overall + pen
        rewards["overall"] = overall
        trunc = truncated_rows(jnp.asarray(tokens), cmask, self.sampler.stop_token_ids)
        inputs = {**jax.tree.map(jnp.asarray, rep), "completion": jnp.asarray(tokens), "completion_mask": cmask}
        part = Rollout(
            inputs=inputs,
            sampler_logp=jnp.asarray(sampler_logp),
            scores=overall,
            truncated=trunc.astype(jnp.float32),
            loss_mask=cmask,
        )
        return part, rewards, t1 - t0, t2 - t1

    def rollout(
        self, params: Any, prompts: dict, rng: jax.Array, kl_reward_coef: float | None = None
    ) -> tuple[Rollout, dict]:
        """Sample, score, select groups, run the pi_old / reference passes and the advantages: the update's batch
        and this step's rollout metrics. kl_reward_coef: the in-reward KL coefficient (default the config's;
        `step` passes the adaptive controller's)."""
        cfg = self.cfg
        kl_reward_coef = cfg.kl_reward_coef if kl_reward_coef is None else kl_reward_coef
        sample_params = params
        if self.programs.relayout is not None:  # one re-layout per rollout phase, in the compute dtype
            sample_params = self.programs.relayout(params)
        parts, t_roll, t_rew, kept = [], 0.0, 0.0, 0
        for attempt in range(cfg.dynamic_sampling_max_tries if cfg.dynamic_sampling else 1):
            if attempt and self.refill is None:
                break
            src = prompts if attempt == 0 else self.refill()
            part, rewards, tr, tw = self._sample_and_score(
                sample_params, src, rng if attempt == 0 else jax.random.fold_in(rng, attempt)
            )
            t_roll, t_rew = t_roll + tr, t_rew + tw
            if attempt == 0:
                first, first_rewards = part, rewards
            signal = host_array(group_has_signal(part.scores, cfg.group_size)).reshape(-1, cfg.group_size)[:, 0]
            n_groups = len(signal)  # global prompt count (a process may hold only its own rows)
            parts.append((part, signal))
            kept += int(signal.sum())
            if kept >= n_groups:
                break
        del sample_params
        t2 = time.perf_counter()
        batch = self._select_groups(parts, n_groups) if cfg.dynamic_sampling else first
        slots = batch.completion.shape[1]
        if cfg.length_buckets > 1:  # no pass below reads the slots after the longest completion
            slots = completion_bucket(int(jnp.max(jnp.sum(batch.completion_mask, axis=1))), cfg)
            if slots < batch.completion.shape[1]:
                batch = self._trim(batch, slots)
        cmask = batch.completion_mask
        loss_mask = self._loss_mask(batch)
        metrics = {}
        old_logp = entropy = None
        if cfg.old_logp != "current":
            trainer_logp, entropy = self._logp_policy(params, batch.inputs)
            old_logp = trainer_logp if cfg.old_logp == "trainer" else batch.sampler_logp
            drift = jnp.abs(trainer_logp - batch.sampler_logp) * cmask
            n_tok = jnp.maximum(cmask.sum(), 1.0)
            metrics.update(
                {
                    "drift/logp_abs_mean": float(drift.sum() / n_tok),
                    "drift/logp_abs_max": float(drift.max()),
                    "entropy": float((entropy * cmask).sum() / n_tok),
                }
            )
        ref_logp = None
        if self.reference_kind in ("base", "adapters"):  # the policy's own base weights: no second copy
            ref_logp = self._logp_ref(params, batch.inputs, self.ref_adapters)
        elif self.ref_params is not None:
            ref = self.ref_params
            if self._ref_shardings is not None:  # offloaded: back on device for this pass only
                ref = jax.device_put(ref, self._ref_shardings)
            ref_logp = self._logp_ref(ref, batch.inputs, None)
            del ref
        token_rewards = None
        if cfg.kl_reward_coef:  # verl apply_kl_penalty: token rewards - beta * KL(pi_old || ref)
            kld = kl_penalty(old_logp, ref_logp, cfg.kl_reward_estimator, cfg.kl_clamp) * cmask
            token_rewards = -kl_reward_coef * kld
            row_kl = kld.sum(axis=1) / jnp.maximum(cmask.sum(axis=1), 1.0)
            metrics.update({"kl_reward/kl": float(row_kl.mean()), "kl_reward/coef": float(kl_reward_coef)})
        advantages = self._advantages(batch.scores, loss_mask, token_rewards)
        batch = batch.replace(
            loss_mask=loss_mask, advantages=advantages, old_logp=old_logp, ref_logp=ref_logp if cfg.kl_coef else None
        )
        jax.block_until_ready(batch)
        t3 = time.perf_counter()
        # metrics of the first rollout batch, before any dynamic-sampling or overlong mask
        lengths = first.completion_mask.sum(axis=1)
        overall = first_rewards["overall"]
        metrics.update({f"reward/{k}": float(jnp.mean(jnp.asarray(v, jnp.float32))) for k, v in first_rewards.items()})
        metrics.update(
            {
                "reward/std_within_group": float(jnp.mean(jnp.std(overall.reshape(-1, cfg.group_size), axis=1))),
                "frac_zero_std_groups": float(1.0 - jnp.mean(group_has_signal(overall, cfg.group_size))),
                "completion_len_mean": float(lengths.mean()),
                "completion_len_max": float(lengths.max()),
                "truncation_rate": float(first.truncated.mean()),
                "completion_slots": float(slots),
                "advantages_abs_mean": float(jnp.sum(jnp.abs(advantages)) / jnp.maximum(loss_mask.sum(), 1.0)),
                "loss_tokens_frac": float(loss_mask.sum() / jnp.maximum(cmask.sum(), 1.0)),
                "time/rollout_s": t_roll,
                "time/reward_s": t_rew,
                "time/logprob_s": t3 - t2,
            }
        )
        if cfg.dynamic_sampling:
            metrics.update(
                {
                    "dynamic_sampling/rollouts": float(len(parts)),
                    "dynamic_sampling/groups_with_signal": float(min(kept, n_groups)) / n_groups,
                }
            )
        return batch, metrics

    def _select_groups(self, parts: list, n_groups: int) -> Rollout:
        """The first n_groups groups with signal across the rollout batches, then groups without signal from the
        first batch to keep the static size (the caller masks their loss). One jitted gather (eager ops on
        arrays sharded over many host devices can starve the CPU collectives' threads)."""
        if len(parts) == 1:
            return parts[0][0]
        g = len(parts[0][0].completion) // n_groups
        order = [(i, j) for i, (_, s) in enumerate(parts) for j in np.flatnonzero(s)][:n_groups]
        order += [(0, j) for j in np.flatnonzero(~parts[0][1])][: n_groups - len(order)]
        idx = np.concatenate([np.arange(g) + (i * n_groups + j) * g for i, j in order]).astype(np.int32)
        return jax.block_until_ready(self._take_rows([p for p, _ in parts], idx))

    # -- update ----------------------------------------------------------------------------------------------
    def step(self, state: TrainState, prompts: dict) -> tuple[TrainState, dict]:
        """One GRPO iteration: sample with the current policy, then num_iterations x mini-batches updates.
        state.step advances by exactly 1 (see module docstring). Runs under the learner's mesh, if any."""
        if self.mesh is None:
            return self._step(state, prompts)
        with jax.set_mesh(self.mesh):
            return self._step(state, prompts)

    def _step(self, state: TrainState, prompts: dict) -> tuple[TrainState, dict]:
        cfg = self.cfg
        rng = jax.random.fold_in(jax.random.key(self.seed), int(state.step))
        adaptive = cfg.kl_ctrl == "adaptive"
        coef = float(state.aux["kl_reward_coef"]) if adaptive else None
        batch, metrics = self.rollout(state.params, prompts, rng, coef)
        t0 = time.perf_counter()
        n_rows = batch.completion.shape[0]
        n_mb = n_rows // mini_batch_rows(n_rows, cfg)
        if cfg.old_logp == "current" and n_mb > 1:
            raise ValueError(
                f"grpo.old_logp='current' is exact only with one mini-batch per step; this batch of "
                f"{n_rows} rows splits into {n_mb} (ppo_mini_batch_size={cfg.ppo_mini_batch_size})"
            )
        stacked = self._split(batch, n_mb, cfg.group_size) if n_mb > 1 else None
        sums: dict[str, float] = {}
        updates = 0
        for _ in range(cfg.num_iterations):
            for i in range(n_mb):
                mb = batch if stacked is None else jax.tree.map(lambda x: x[i], stacked)
                state, m = self._update(state, mb)
                updates += 1
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
        state = self._advance(state)  # one rollout step, however many updates it ran
        if adaptive:  # the controller moves after the batch that used it (verl apply_kl_penalty)
            new = adaptive_kl_coef(coef, metrics["kl_reward/kl"], n_rows, cfg.kl_target, cfg.kl_horizon)
            state = state.replace(aux={**state.aux, "kl_reward_coef": jnp.float32(new)})
        jax.block_until_ready(state.step)
        metrics["time/update_s"] = time.perf_counter() - t0
        tokens = max(float(sums.pop("tokens")), 1.0)
        for k in list(sums):
            if k.endswith("_sum"):
                metrics[k[:-4]] = float(sums.pop(k)) / tokens
        metrics.update({k: float(v) / updates for k, v in sums.items()})
        metrics["updates"] = float(updates)
        return state, metrics
