"""Checkpointer: exact round trip, restore onto another mesh, fallback past a corrupt latest step."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.checkpoint import Checkpointer, PreemptionGuard, abstract_like
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import state_shardings


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "text": {
            "embed": {"embedding": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
            "layers": {"mlp": {"up": {"kernel": jnp.asarray(rng.normal(size=(2, 8, 16)), jnp.float32)}}},
        },
        "lm_head": {"kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
    }


def _state_on(mesh):
    tx = optax.adamw(1e-3)
    state = init_train_state(_params(), tx, seed=3)
    sh = state_shardings(state, mesh)
    return jax.device_put(state, sh), sh


def test_round_trip_onto_a_different_mesh(tmp_path):
    state, _ = _state_on(make_mesh(MeshConfig(8, 1, 1)))
    ck = Checkpointer(tmp_path, save_every=1, keep=2)
    assert ck.save(5, state, data_state={"next_index": 7}, config={"lr": 1e-3})
    ck.wait()
    mesh2 = make_mesh(MeshConfig(2, 2, 2))
    target_state, target_sh = _state_on(mesh2)
    restored, data_state, step = ck.restore(abstract_like(target_state, target_sh))
    assert step == 5 and data_state == {"next_index": 7} and ck.read_config() == {"lr": 1e-3}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    up = restored.params["text"]["layers"]["mlp"]["up"]["kernel"]
    assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (2, 4, 8)
    ck.close()


def test_corrupt_latest_falls_back_with_a_warning(tmp_path, caplog):
    state, sh = _state_on(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1]))
    ck = Checkpointer(tmp_path, save_every=1, keep=3, async_save=False)
    ck.save(1, state, data_state={"i": 1})
    state2 = state.replace(step=state.step + 1)
    ck.save(2, state2, data_state={"i": 2})
    ck.wait()
    # truncate every data file of step 2
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            open(os.path.join(root, f), "wb").close()
    restored, data_state, step = ck.restore(abstract_like(state, sh))
    assert step == 1 and data_state == {"i": 1}
    assert "unreadable" in caplog.text
    with pytest.raises(RuntimeError, match="step 2"):
        ck.restore(abstract_like(state, sh), step=2)


def test_save_interval_and_guard():
    guard = PreemptionGuard()
    with guard.installed():
        os.kill(os.getpid(), signal.SIGTERM)
    assert guard.stop_requested and guard.received == signal.SIGTERM
