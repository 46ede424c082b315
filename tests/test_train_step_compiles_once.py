"""The production jit (explicit in/out shardings, donated state, context mesh) compiles the SFT step once
over 3 steps and a checkpoint resume on a (2,2,2) mesh: small leaves (norm scales, biases, their moments)
come back with the shardings they went in with."""

import jax
import numpy as np
import pytest
from flax import nnx

from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import tiny
from dmx_jax.sharding import MeshConfig, batch_spec, make_mesh
from dmx_jax.training.checkpoint import Checkpointer, abstract_like
from dmx_jax.training.optim import OptimConfig, make_optimizer
from dmx_jax.training.sft import make_sft_loss
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import jit_train_step, make_train_step, state_shardings


def _batch(mesh, seed):
    r = np.random.default_rng(seed)
    ids = r.integers(3, 1000, size=(8, 24)).astype(np.int32)
    pos = np.broadcast_to(np.arange(24, dtype=np.int32), (8, 3, 24)).copy()
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids), "positions": pos}
    sh = {k: jax.sharding.NamedSharding(mesh, batch_spec(v.ndim)) for k, v in arrays.items()}
    return jax.device_put(arrays, sh), sh


@pytest.mark.slow
def test_sft_step_compiles_once_over_steps_and_resume(tmp_path):
    mesh = make_mesh(MeshConfig(2, 2, 2))
    cfg = tiny().replace(attention="chunked", attention_block=8, remat="full")
    model = Qwen25VL(cfg, nnx.Rngs(0))
    graphdef = nnx.graphdef(model)
    tx = make_optimizer(OptimConfig(learning_rate=1e-3, warmup_steps=1, total_steps=10))
    state = init_train_state(nnx.to_pure_dict(nnx.state(model, nnx.Param)), tx)
    sh = state_shardings(state, mesh)
    state = jax.device_put(state, sh)
    _, batch_sh = _batch(mesh, 0)
    step = jit_train_step(make_train_step(graphdef, make_sft_loss(8), tx), sh, batch_sh, mesh=mesh)
    losses = []
    for i in range(3):
        state, m = step(state, _batch(mesh, i)[0])
        losses.append(float(m["loss"]))
    assert step.jitted._cache_size() == 1
    ck = Checkpointer(tmp_path / "ck", save_every=1, keep=1, async_save=False)
    ck.save(3, state)
    ck.wait()
    restored, _, at = ck.restore(abstract_like(state, sh))
    ck.close()
    assert at == 3
    state, m = step(restored, _batch(mesh, 3)[0])
    assert step.jitted._cache_size() == 1, "the step recompiled after a resume"
    assert np.isfinite(float(m["loss"])) and losses[-1] < losses[0] + 1.0
    jax.tree.map(
        lambda a, s: (
            None
            if a.sharding.is_equivalent_to(s, a.ndim)
            else (_ for _ in ()).throw(AssertionError(f"leaf came back with {a.sharding}, expected {s}"))
        ),
        state,
        sh,
    )
