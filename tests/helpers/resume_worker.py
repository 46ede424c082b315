"""A training run of the toy LM that checkpoints every 2 steps; used by the kill/resume tests.

usage: resume_worker.py RUN_DIR NUM_STEPS SLEEP_PER_STEP
"""

import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax
import numpy as np
import optax
from flax import nnx

from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.checkpoint import Checkpointer
from dmx_jax.training.loop import LoopConfig, LoopIO, MetricsWriter, train_loop
from dmx_jax.training.resume import start_or_resume
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step, state_shardings
from tests.helpers.toy_lm import ToyLM, toy_loss


class IndexedBatches:
    """Deterministic batch i = f(seed, i); the state is the next index."""

    def __init__(self, seed=0):
        self.seed, self.i = seed, 0

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.i])
        self.i += 1
        ids = rng.integers(0, 32, size=(4, 10)).astype(np.int32)
        meta = {"example_ids": [f"b{self.i - 1}-{k}" for k in range(4)]}
        return {"input_ids": ids, "loss_mask": np.ones_like(ids)}, meta

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def main(run_dir, num_steps, sleep):
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    graphdef, st = nnx.split(ToyLM())
    tx = optax.adamw(1e-2)
    state = init_train_state(nnx.to_pure_dict(st), tx)
    sh = state_shardings(state, mesh)
    ck = Checkpointer(os.path.join(run_dir, "ckpt"), save_every=2, keep=3, async_save=False)
    data = IndexedBatches()
    state, _ = start_or_resume(state, sh, ck, data)
    step_fn = jax.jit(make_train_step(graphdef, toy_loss, tx), donate_argnums=(0,))

    def slow(step, metrics, state):
        time.sleep(sleep)

    train_loop(
        step_fn,
        state,
        data,
        LoopConfig(num_steps=num_steps, progress=False),
        LoopIO(checkpointer=ck, writer=MetricsWriter(os.path.join(run_dir, "metrics.jsonl")), on_step=slow),
    )
    ck.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
