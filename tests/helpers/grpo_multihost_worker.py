"""One process of the 2-process GRPO test: join via jax.distributed, run 2 data-parallel GRPO steps with this
process's own prompts, write (metrics, parameter updates) from process 0."""

import os
import pickle
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.helpers.xla_flags import host_devices  # noqa: E402

os.environ["XLA_FLAGS"] = host_devices(4)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")
from dmx_jax.sharding import DistributedConfig, initialize  # noqa: E402

initialize(
    DistributedConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
)
assert jax.device_count() == 4 * num_processes, jax.devices()

from tests.test_grpo_vlm import _two_steps  # noqa: E402

hist, moved = _two_steps((2, 2, 2), per_process=True)
if jax.process_index() == 0:
    with open(out, "wb") as f:
        pickle.dump((hist, moved), f)
