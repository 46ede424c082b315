"""Meshes, the logical-axis rule table, and multi-host helpers."""

from dmx_jax.sharding.distributed import (
    DistributedConfig,
    batch_shards,
    global_array,
    global_batch,
    host_array,
    initialize,
    is_main_process,
    process_slice,
)
from dmx_jax.sharding.mesh import MESH_AXES, MeshConfig, make_mesh, replicated
from dmx_jax.sharding.rules import (
    PARAM_LOGICAL_AXES,
    SAMPLE_RULES,
    TRAIN_RULES,
    batch_spec,
    explain,
    logical_axes,
    param_sharding_fn,
    param_spec,
    path_to_str,
    shardings_like_params,
    spec_for,
    tree_partition_specs,
    tree_shardings,
)
