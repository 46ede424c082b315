"""Train state: one pytree with params, optimizer state, step and RNG."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: Any  # nested dict of arrays (nnx.to_pure_dict of the model state)
    opt_state: Any
    step: jax.Array  # int32 scalar
    rng: jax.Array  # uint32 [2] raw key data (checkpoint-friendly)
    aux: dict = dataclasses.field(default_factory=dict)  # algorithm state beside the optimizer's, checkpointed
    # with it: GRPO's adaptive KL coefficient; {} in every other stage

    def replace(self, **kw) -> TrainState:
        return dataclasses.replace(self, **kw)


def init_train_state(
    params: Any, tx: optax.GradientTransformation, seed: int = 0, aux: dict | None = None
) -> TrainState:
    return TrainState(
        params=params,
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(jax.random.key(seed)),
        aux=aux or {},
    )


def cast_floating(tree: Any, dtype) -> Any:
    """Cast floating leaves (bf16 compute copies of fp32 master weights)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
