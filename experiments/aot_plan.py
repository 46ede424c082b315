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
from experiments.stages import stage_optimizer
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


def _state(plan: Plan, stage_cfg, updates_per_step: int = 1):
    """(optimizer, abstract train state, its shardings) of a stage, the optimizer built as the runner builds it
    (frozen parts and LoRA: no state for what does not train)."""
    tx = stage_optimizer(stage_cfg, plan.params, updates_per_step)(stage_cfg.optim)
    opt = jax.eval_shape(tx.init, plan.params)
    rep = NamedSharding(plan.mesh, P())
    state = TrainState(
        plan.params,
        opt,
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
    )
    sh = state_shardings(state, plan.mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sh)
    return tx, state, sh


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
