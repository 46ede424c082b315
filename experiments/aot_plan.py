"""What the fit check's rows build on: the abstract sharded model of a preset on a slice's mesh (Plan), a stage's
abstract train state with the optimizer the runner builds, a row's identity, and the image grid and weight bytes
the rooflines count. Nothing is allocated."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dmx_jax.training.state import TrainState
from dmx_jax.training.step import state_shardings
from experiments.tpu_compile import Chip, Row


@dataclasses.dataclass
class Plan:
    cfg: Any  # ExperimentConfig
    mcfg: Any  # ModelConfig with memory overrides and compute dtype
    mesh: Mesh
    chip: Chip
    label: str
    patches: int
    graphdef: Any
    params: Any  # abstract, sharded
    n_params: int
    stop_ids: tuple[int, ...] = ()  # the rollout's stop tokens (the runner's come from the tokenizer)


def _state(plan: Plan, tx, aux: dict | None = None):
    """(abstract train state, its shardings) of a stage whose optimizer is `tx` (the one the runner builds: frozen
    parts and LoRA hold no state) and whose algorithm state is `aux`, laid out as experiments.stages.stage_state
    lays out the runner's."""
    opt = jax.eval_shape(tx.init, plan.params)
    rep = NamedSharding(plan.mesh, P())
    state = TrainState(
        plan.params,
        opt,
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), aux or {}),
    )
    sh = state_shardings(state, plan.mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sh)
    return state, sh


def _row(plan: Plan, stage: str, step: str, batch: int, seq: int, shapes: str) -> Row:
    return Row(stage, step, plan.label, plan.mesh.size, plan.chip.hbm_gib, plan.n_params, batch, seq, shapes)


def _image_grid(plan: Plan) -> list[int]:
    """The most square grid within the patch budget (for the FLOP count)."""
    m = plan.mcfg.vision.spatial_merge_size
    side = int(math.isqrt(plan.patches // (m * m)))
    return [1, side * m, (plan.patches // (m * m) // side) * m]


def _weight_read_bytes(plan: Plan) -> float:
    """bf16 weights every chip reads per pass (after FSDP gathers: the full model)."""
    return 2.0 * plan.n_params
