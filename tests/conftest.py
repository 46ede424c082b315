"""Test-wide setup: 8 host CPU devices for sharding tests (tests/helpers/xla_flags.py), absl flags for grain
workers.

This is the only place jax.config is touched in the suite. XLA_FLAGS must be set before jax
initialises its backend, hence at import time of this file.
"""

import os

from tests.helpers.xla_flags import host_devices

os.environ.setdefault("XLA_FLAGS", host_devices(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax
from absl import flags

flags.FLAGS.mark_as_parsed()  # grain multiprocessing reads absl flags (stack.md §3)
jax.config.update("jax_default_matmul_precision", "highest")  # fp32 parity tests need true fp32 matmuls
