"""Shared driver: N sharded train steps of the toy LM on a mesh, with per-process batch assembly."""

import jax
import numpy as np
import optax
from flax import nnx

from dmx_jax.sharding import MeshConfig, batch_spec, global_batch, make_mesh, process_slice
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import jit_train_step, make_train_step, state_shardings
from tests.helpers.toy_lm import ToyLM, toy_batches, toy_loss


def run_steps(mesh_shape=(2, 2, 2), steps=3, grad_accum=1, batch_size=8):
    mesh = make_mesh(MeshConfig(*mesh_shape))
    model = ToyLM()
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(1e-2)
    st = init_train_state(params, tx)
    sh = state_shardings(st, mesh)
    st = jax.device_put(st, sh)
    step_fn = make_train_step(graphdef, toy_loss, tx, grad_accum=grad_accum)
    batch_sh = {k: jax.sharding.NamedSharding(mesh, batch_spec(2)) for k in ("input_ids", "loss_mask")}
    jitted = jit_train_step(step_fn, sh, batch_sh)
    losses = []
    for batch in toy_batches(steps, batch_size=batch_size):
        rows = process_slice(batch_size)
        local = {k: v[rows] for k, v in batch.items()}
        gb = global_batch(local, mesh, {k: batch_spec(2) for k in local})
        st, m = jitted(st, gb)
        losses.append(float(m["loss"]))
    final = {
        k: np.asarray(jax.experimental.multihost_utils.process_allgather(v, tiled=True))
        for k, v in [("embed", st.params["text"]["embed"]["embedding"])]
    }
    return {"losses": losses, "embed_sum": float(final["embed"].sum())}
