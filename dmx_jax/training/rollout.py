"""The records GRPO hands between its pieces: how rollouts are drawn (Sampler), how completions are scored under a
model (PolicyLogprob), and one rollout batch (Rollout).

N = prompts x G rows, groups contiguous (rows g*G .. g*G + G - 1 answer prompt g); Tn = completion slots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Sampler:
    """sample(params, prompts, rng) -> (tokens [N, Tn] int, sampler_logp [N, Tn], completion_mask [N, Tn]).

    group_size: rows the sampler draws per prompt row it receives. G: it gets the P prompts once and expands
    each into its G samples after one shared prefill; 1: it gets the prompts already repeated G times.
    stop_token_ids: the ids that end a completion (a row that fills every slot without one was truncated)."""

    sample: Callable
    group_size: int = 1
    stop_token_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class PolicyLogprob:
    """fn(model, inputs) -> per-token log-probs [N, Tn] of inputs['completion'] at the sampling temperature,
    where inputs is the prompt arrays plus 'completion' and 'completion_mask'. with_entropy: fn also takes
    return_entropy=True and then returns (logp, entropy [N, Tn])."""

    fn: Callable
    with_entropy: bool = False

    def __call__(self, model, inputs: dict, entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """(logp, entropy or None)."""
        if entropy:
            if not self.with_entropy:
                raise ValueError("this log-prob function computes no entropy (PolicyLogprob.with_entropy=False)")
            return self.fn(model, inputs, return_entropy=True)
        return self.fn(model, inputs), None


@dataclasses.dataclass(frozen=True)
class Reference:
    """The KL reference of a GRPO learner. params: a frozen copy of them is kept, in `dtype` (None: as given),
    in host memory between uses when `offload`. adapters: the reference is the policy's own base with these LoRA
    adapter values (dmx_jax.model.lora.adapters_of the stage's starting parameters): a copy of the adapters alone,
    so the reference is the policy the stage started from. adapters_off: the policy's base with its adapters
    switched off (dmx_jax.model.lora.disable_adapters): the model before any adapter training, and no copy."""

    params: Any = None
    dtype: Any = None
    offload: bool = False
    adapters: Any = None
    adapters_off: bool = False

    @property
    def kind(self) -> str:
        """'adapters', 'base' (adapters off) or 'params' (a copy of the reference parameters)."""
        return "adapters" if self.adapters is not None else "base" if self.adapters_off else "params"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """One rollout batch; every leaf is batch-major (it splits into mini- and micro-batches and shards by rows).

    inputs: the prompt arrays (each prompt's row repeated G times) plus 'completion' [N, Tn] and
    'completion_mask' [N, Tn]: what the log-prob function reads. scores: the sequence reward [N] ('overall',
    the overlong penalty included). truncated: [N] 1.0 where max_new_tokens cut the completion. loss_mask [N, Tn]:
    completion_mask less the rows dynamic sampling or overlong filtering take out. advantages [N, Tn].
    old_logp: pi_old [N, Tn]; None means the update's own log-probs under stop_gradient (old_logp='current').
    ref_logp: the reference's [N, Tn], None without a KL term."""

    inputs: dict[str, Any]
    sampler_logp: jax.Array
    scores: jax.Array
    truncated: jax.Array
    loss_mask: jax.Array
    advantages: jax.Array | None = None
    old_logp: jax.Array | None = None
    ref_logp: jax.Array | None = None

    @property
    def completion(self) -> jax.Array:
        return self.inputs["completion"]

    @property
    def completion_mask(self) -> jax.Array:
        return self.inputs["completion_mask"]

    def replace(self, **kw) -> Rollout:
        return dataclasses.replace(self, **kw)
