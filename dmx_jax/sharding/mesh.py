"""Device meshes over the axes (data, fsdp, tensor).

Sizes come from config; -1 means "all devices left over". Axes are Auto (GSPMD-style propagation): in
jax 0.10 `jax.make_mesh` defaults to Explicit axes, which would make shardings part of array types
(stack.md §4), so we always ask for Auto.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes. Exactly one may be -1 (fill with the remaining devices)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(
                f"mesh sizes must be positive or -1, got data={self.data} fsdp={self.fsdp} tensor={self.tensor}"
            )
        n_fill = sum(s == -1 for s in sizes)
        if n_fill > 1:
            raise ValueError(
                f"at most one mesh axis may be -1, got data={self.data} fsdp={self.fsdp} tensor={self.tensor}"
            )
        known = math.prod(s for s in sizes if s != -1)
        if n_fill:
            if num_devices % known:
                raise ValueError(
                    f"{num_devices} devices cannot be split into mesh {sizes} (fixed axes multiply to {known})"
                )
            sizes = [num_devices // known if s == -1 else s for s in sizes]
        if math.prod(sizes) != num_devices:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, found {num_devices}"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes over `devices` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
