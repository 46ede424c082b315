"""Multi-host: process-group start-up and global batches assembled from per-process shards."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How to join a multi-process run. All None + no environment hints = single process.

    On Cloud TPU pods and SLURM/Open MPI clusters `jax.distributed.initialize()` discovers everything by
    itself; set `auto=True` there. Elsewhere give the coordinator address, process count and id
    (or the env vars DMX_COORDINATOR, DMX_NUM_PROCESSES, DMX_PROCESS_ID).
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    auto: bool = False


def _from_env(cfg: DistributedConfig) -> DistributedConfig:
    env = os.environ
    return dataclasses.replace(
        cfg,
        coordinator_address=cfg.coordinator_address or env.get("DMX_COORDINATOR"),
        num_processes=cfg.num_processes or (int(env["DMX_NUM_PROCESSES"]) if "DMX_NUM_PROCESSES" in env else None),
        process_id=cfg.process_id
        if cfg.process_id is not None
        else (int(env["DMX_PROCESS_ID"]) if "DMX_PROCESS_ID" in env else None),
    )


def initialize(cfg: DistributedConfig = DistributedConfig()) -> bool:
    """Start jax.distributed when asked to; returns True when running multi-process.

    Must run before anything touches jax devices.
    """
    cfg = _from_env(cfg)
    if cfg.auto:
        jax.distributed.initialize()
        return jax.process_count() > 1
    if cfg.coordinator_address is None and cfg.num_processes is None:
        return False
    missing = [f for f in ("coordinator_address", "num_processes", "process_id") if getattr(cfg, f) is None]
    if missing:
        raise ValueError(
            f"multi-process run needs coordinator_address, num_processes and process_id; missing {missing}"
        )
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator_address,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=list(cfg.local_device_ids) if cfg.local_device_ids is not None else None,
    )
    return jax.process_count() > 1


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch this process loads (batch split evenly across processes)."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {n} processes")
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def global_array(local: Any, mesh: Mesh, spec: PartitionSpec) -> jax.Array:
    """Assemble one global jax.Array from this process's rows (leading axis) of a batch."""
    local = np.asarray(local)
    sharding = NamedSharding(mesh, spec)
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def replicated_array(value: Any, mesh: Mesh) -> jax.Array:
    """One global jax.Array replicated over the mesh from a host value that is equal on every process."""
    arr = np.asarray(value)
    return jax.make_array_from_callback(arr.shape, NamedSharding(mesh, PartitionSpec()), lambda idx: arr[idx])


def global_batch(local_batch: dict[str, Any], mesh: Mesh, specs: dict[str, PartitionSpec]) -> dict[str, jax.Array]:
    """global_array over a dict batch; keys without a spec are replicated (must be equal on all processes)."""
    return {
        k: global_array(v, mesh, specs[k]) if k in specs else replicated_array(v, mesh) for k, v in local_batch.items()
    }


def batch_shards(mesh: Mesh) -> int:
    """Devices a batch's rows are split over: the mesh's data x fsdp axes (rules.batch_spec)."""
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def host_array(x: Any) -> np.ndarray:
    """The whole array on this host (all-gathered across processes when it spans non-local devices)."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_main_process() -> bool:
    return jax.process_index() == 0
