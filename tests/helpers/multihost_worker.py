"""One process of the 2-process CPU test: join via jax.distributed, run 3 sharded train steps, print losses."""

import json
import os
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.xla_flags import host_devices  # noqa: E402

os.environ["XLA_FLAGS"] = host_devices(4)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
from dmx_jax.sharding import DistributedConfig, initialize  # noqa: E402

initialize(
    DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
)
assert jax.device_count() == 4 * num_processes, jax.devices()

from tests.helpers.train_common import run_steps  # noqa: E402

losses = run_steps(mesh_shape=(2, 2, 2), steps=3)
if jax.process_index() == 0:
    with open(out, "w") as f:
        json.dump(losses, f)
