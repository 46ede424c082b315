"""The jitted train step: micro-batch gradient accumulation, clipping, AdamW, donated state.

`loss_fn(model, batch, rng) -> (loss_sum, weight_count, aux)` returns sums, not means, so micro-batches
combine exactly: the step divides by the total count once. Every leaf of `batch` has the batch as its
leading axis (so it splits into micro-batches and shards over (data, fsdp)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from dmx_jax.sharding import rules as sharding_rules
from dmx_jax.training.optim import Trainable
from dmx_jax.training.state import TrainState, cast_floating

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, jax.Array, dict]]


def _split_micro(batch: dict, k: int) -> dict:
    def one(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={k}")
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])

    return jax.tree.map(one, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    grad_accum: int = 1,
    compute_dtype=None,
    counts_step: bool = True,
    trainable: Trainable | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The pure step function (not jitted; see `jit_train_step`). counts_step=False leaves state.step alone (GRPO
    runs several updates per step and advances the step once). trainable (the optimizer's; None:
    `Trainable.of(params)`, the LoRA adapters alone when the parameters hold them, else everything): only those
    leaves are differentiated and accumulated; the rest get zero gradients, so no gradient or accumulator of a
    frozen tower or base is ever built."""

    def loss_on_params(trained, frozen, split, batch, rng):
        model = nnx.merge(graphdef, cast_floating(split.join(trained, frozen), compute_dtype))
        loss_sum, count, aux = loss_fn(model, batch, rng)
        return loss_sum, (count, aux)

    grad_fn = jax.value_and_grad(loss_on_params, has_aux=True)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.wrap_key_data(state.rng)
        rng, step_rng = jax.random.split(rng)
        which = Trainable.of(state.params) if trainable is None else trainable
        split = _Split.of(state.params, None if which.everything else which)
        trained, frozen = split.parts(state.params)
        if grad_accum == 1:
            (loss_sum, (count, aux)), grads = grad_fn(trained, frozen, split, batch, step_rng)
        else:
            micro = _split_micro(batch, grad_accum)
            zeros = jax.tree.map(jnp.zeros_like, trained)

            def body(carry, xs):
                g_acc, l_acc, c_acc = carry
                mb, r = xs
                (loss, (c, aux)), g = grad_fn(trained, frozen, split, mb, r)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, c_acc + c), aux

            rngs = jax.random.split(step_rng, grad_accum)
            (grads, loss_sum, count), aux = jax.lax.scan(body, (zeros, jnp.zeros(()), jnp.zeros(())), (micro, rngs))
            aux = jax.tree.map(lambda a: jnp.mean(a, axis=0), aux)
        denom = jnp.maximum(count, 1.0)
        grads = split.join(jax.tree.map(lambda g: g / denom, grads), jax.tree.map(jnp.zeros_like, frozen))
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            params=params, opt_state=opt_state, step=state.step + int(counts_step), rng=jax.random.key_data(rng)
        )
        metrics = {"loss": loss_sum / denom, "tokens": count, "grad_norm": grad_norm, **aux}
        return new_state, metrics

    return step


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Split:
    """Which leaves of a parameter tree are differentiated: `parts` cuts the tree into (trained, frozen) leaf
    lists, `join` puts them back. Without a predicate the tree passes whole: (params, []) and back."""

    treedef: Any
    trained: tuple[bool, ...] | None  # None: every leaf, the tree itself

    @classmethod
    def of(cls, params, predicate: Callable[[str], bool] | None) -> _Split:
        if predicate is None:
            return cls(None, None)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        return cls(treedef, tuple(bool(predicate(sharding_rules.path_to_str(p))) for p, _ in leaves))

    def parts(self, params) -> tuple[Any, list]:
        if self.trained is None:
            return params, []
        leaves = jax.tree.leaves(params)
        return ([x for x, t in zip(leaves, self.trained) if t], [x for x, t in zip(leaves, self.trained) if not t])

    def join(self, trained, frozen: list):
        if self.trained is None:
            return trained
        it_t, it_f = iter(trained), iter(frozen)
        return self.treedef.unflatten([next(it_t) if t else next(it_f) for t in self.trained])


def state_shardings(state: TrainState, mesh: Mesh, rules=sharding_rules.TRAIN_RULES) -> TrainState:
    """NamedShardings for every leaf of a (possibly abstract) TrainState, from the one rule table."""
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    return TrainState(
        params=sharding_rules.tree_shardings(state.params, mesh, rules),
        opt_state=sharding_rules.shardings_like_params(state.opt_state, state.params, mesh, rules),
        step=replicated,
        rng=replicated,
        aux=jax.tree.map(lambda _: replicated, state.aux),
    )


def batch_shardings(batch: dict, mesh: Mesh, rules=sharding_rules.TRAIN_RULES) -> dict:
    return jax.tree.map(lambda x: NamedSharding(mesh, sharding_rules.batch_spec(x.ndim, rules)), batch)


@dataclasses.dataclass(frozen=True)
class MeshProgram:
    """A jitted program and the mesh its calls run under (`jax.set_mesh`, so the model's activation constraints
    apply inside); mesh None calls it as it is. `jitted` is the jax.jit object (e.g. `jitted._cache_size()`)."""

    jitted: Any
    mesh: Mesh | None = None

    def __call__(self, *args):
        if self.mesh is None:
            return self.jitted(*args)
        with jax.set_mesh(self.mesh):
            return self.jitted(*args)


def jit_train_step(
    step_fn, state_sharding: TrainState | None, batch_sharding: Any = None, mesh: Mesh | None = None
) -> MeshProgram:
    """The one way a train step is jitted (SFT, cold start, alignment, the GRPO update): `step(state, batch) ->
    (state, metrics)` with the state donated (updated in place) and, given `state_sharding`, taken and returned
    in those shardings, so every leaf keeps its layout and the step compiles once for the whole run (resumes
    included). batch_sharding None takes the placed batch's own shardings; state_sharding None leaves the
    state's layout to the arguments (single-device library use)."""
    fixed = (
        {}
        if state_sharding is None
        else {"in_shardings": (state_sharding, batch_sharding), "out_shardings": (state_sharding, None)}
    )
    return MeshProgram(jax.jit(step_fn, donate_argnums=(0,), **fixed), mesh)
