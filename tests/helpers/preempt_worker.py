"""One process of the 2-process preemption test: train the toy LM with train_loop; in phase "cut" only process 1
receives SIGTERM (after step 2). Writes <out>/<phase>_<process>.json: steps run, final step, restored data state.

usage: preempt_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR PHASE
"""

import json
import os
import signal
import sys

process_id, num_processes, port, out, phase = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.xla_flags import host_devices  # noqa: E402

os.environ["XLA_FLAGS"] = host_devices(4)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from dmx_jax.sharding import DistributedConfig, MeshConfig, batch_spec, global_batch, initialize, make_mesh  # noqa: E402
from dmx_jax.training.checkpoint import Checkpointer  # noqa: E402
from dmx_jax.training.loop import LoopConfig, LoopIO, train_loop  # noqa: E402
from dmx_jax.training.resume import start_or_resume  # noqa: E402
from dmx_jax.training.state import init_train_state  # noqa: E402
from dmx_jax.training.step import make_train_step, state_shardings  # noqa: E402
from tests.helpers.toy_lm import ToyLM, toy_loss  # noqa: E402

initialize(
    DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
)


class ShardBatches:
    """Each process draws its own rows (like a grain shard); its state differs from the other process's."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        rng = np.random.default_rng([jax.process_index(), self.i])
        self.i += 1
        ids = rng.integers(0, 32, size=(8, 10)).astype(np.int32)
        return {"input_ids": ids, "loss_mask": np.ones_like(ids)}, {"example_ids": []}

    def get_state(self):
        return {"i": self.i, "process": jax.process_index()}

    def set_state(self, state):
        self.i = int(state["i"])
        self.restored = state


mesh = make_mesh(MeshConfig(data=-1, fsdp=1, tensor=1))
graphdef, st = nnx.split(ToyLM())
tx = optax.adamw(1e-2)
state = init_train_state(nnx.to_pure_dict(st), tx)
ck = Checkpointer(os.path.join(out, "ckpt"), save_every=100, keep=2, async_save=False)
data = ShardBatches()
state, start = start_or_resume(state, state_shardings(state, mesh), ck, data)
step_fn = jax.jit(make_train_step(graphdef, toy_loss, tx), donate_argnums=(0,))


def place(arrays, meta):  # each process contributes its own 8 rows of the global batch of 16
    return global_batch(arrays, mesh, {k: batch_spec(2) for k in arrays})


def on_step(step, metrics, state):
    if phase == "cut" and process_id == 1 and step == 2:
        os.kill(os.getpid(), signal.SIGTERM)


state, summary = train_loop(
    step_fn,
    state,
    data,
    LoopConfig(num_steps=6, progress=False),
    LoopIO(checkpointer=ck, prepare=place, on_step=on_step),
)
ck.close()
with open(os.path.join(out, f"{phase}_{process_id}.json"), "w") as f:
    json.dump(
        {
            "start": start,
            "final_step": int(state.step),
            "preempted": summary["preempted"],
            "restored": getattr(data, "restored", None),
            "saved_steps": ck.all_steps(),
        },
        f,
    )
