"""Sharded train steps equal one device; gradient accumulation equals one big batch; 2 CPU processes agree."""

import json

import jax
import jax.experimental.multihost_utils  # used by train_common
import numpy as np
import pytest

import tests.helpers.train_common as tc
from dmx_jax.sharding import MeshConfig, make_mesh
from tests.helpers.processes import run_workers
from tests.helpers.train_common import run_steps


def test_mesh_2x2x2_equals_one_device_and_grad_accum_equals_big_batch():
    ref = _on_one_device()
    sharded = run_steps(mesh_shape=(2, 2, 2), steps=3)
    np.testing.assert_allclose(sharded["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(sharded["embed_sum"], ref["embed_sum"], rtol=1e-5)
    accum = run_steps(mesh_shape=(2, 2, 2), steps=3, grad_accum=2)
    np.testing.assert_allclose(accum["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(accum["embed_sum"], ref["embed_sum"], rtol=1e-5)


def _on_one_device():
    orig = tc.make_mesh
    tc.make_mesh = lambda cfg: make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    try:
        return tc.run_steps(mesh_shape=(1, 1, 1), steps=3)
    finally:
        tc.make_mesh = orig


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path):
    out = tmp_path / "losses.json"
    run_workers("tests/helpers/multihost_worker.py", 2, out, timeout=240)
    got = json.loads(out.read_text())
    ref = _on_one_device()
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["embed_sum"], ref["embed_sum"], rtol=1e-5)
