"""Compiling one jitted step for a TPU slice on this CPU: slice names and chip specs, the abstract sharded
inputs, XLA's per-chip memory of the compiled step (an out-of-memory compile becomes a row, not a traceback)
and a roofline step time. `experiments.aot` builds the stages' real steps on top of it.

libtpu: `pip install "jax[tpu]==<installed jax>"` (the `tpu` extra); works with JAX_PLATFORMS=cpu.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes on this host may hold libtpu's lock

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dmx_jax.sharding.rules import batch_spec

GiB = 2**30

# slice name -> libtpu topology; chips = product of the topology dims
SLICES = {
    "v4-8": "v4:2x2x1",
    "v4-16": "v4:2x2x2",
    "v5e-4": "v5e:2x2",
    "v5e-8": "v5e:2x4",
    "v5e-16": "v5e:4x4",
    "v5p-8": "v5p:2x2x1",
    "v5p-16": "v5p:2x2x2",
    "v5p-32": "v5p:2x2x4",
    "v6e-4": "v6e:2x2",
    "v6e-8": "v6e:2x4",
    "v6e-16": "v6e:4x4",
}


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float  # usable HBM per chip (what XLA:TPU reports as available)
    hbm_bw: float  # bytes/s
    peak_bf16: float  # FLOP/s


CHIPS = {
    "v4": Chip(32.0, 1.2e12, 275e12),
    "v5e": Chip(15.75, 8.19e11, 197e12),
    "v5p": Chip(95.74, 2.765e12, 459e12),
    "v6e": Chip(32.0, 1.64e12, 918e12),
}


class AotError(Exception):
    """A bad input (unknown topology, preset, stage): printed as one line."""


def resolve_topology(name: str) -> tuple[str, str, Chip]:
    """'v5p-8' or 'v5p:2x2x1' -> (slice label, libtpu topology string, chip spec)."""
    topo = SLICES.get(name.lower(), name)
    m = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", topo.lower())
    if not m:
        raise AotError(
            f"unknown topology {name!r}: use a slice name ({', '.join(SLICES)}) or a libtpu topology "
            f"such as 'v5p:2x2x1' (generation v4|v5e|v5p|v6e)"
        )
    return name, topo.lower(), CHIPS[m.group(1)]


def topology_devices(topo: str) -> list:
    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topo).devices)
    except ImportError as e:
        raise AotError(f"libtpu is not importable ({e}); pip install 'jax[tpu]=={jax.__version__}'") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AotError(f"libtpu cannot describe topology {topo!r}: {first}") from None


def libtpu_available() -> bool:
    try:
        import libtpu  # noqa: F401, PLC0415 optional

        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------- shapes
def _sds(shape, dtype, mesh, spec=None):
    spec = P() if spec is None else spec
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=NamedSharding(mesh, spec))


def batch_leaf(shape, dtype, mesh):
    """An abstract batch-major leaf, its rows split over data x fsdp (replicated when they do not divide)."""
    spec = batch_spec(len(shape))
    n = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    if shape[0] % n:
        spec = P()
    return _sds(shape, dtype, mesh, spec)


def image_batch(mcfg, rows: int, patches: int, mesh) -> dict:
    """Abstract per-row images: pixel_values [B, P, F] + vision_inputs (what the data pipeline emits)."""
    unit = mcfg.vision.spatial_merge_size**2
    b = lambda shape, dt=jnp.int32: batch_leaf(shape, dt, mesh)
    return {
        "pixel_values": b((rows, patches, mcfg.vision.patch_dim), jnp.float32),
        "vision_inputs": {
            "rot_hw": b((rows, patches, 2)),
            "window_seg": b((rows, patches)),
            "full_seg": b((rows, patches)),
            "window_index": b((rows, patches // unit)),
            "reverse_index": b((rows, patches // unit)),
        },
    }


def text_batch(rows: int, seq: int, mesh, *, loss: bool = True) -> dict:
    b = lambda shape, dt=jnp.int32: batch_leaf(shape, dt, mesh)
    out = {"input_ids": b((rows, seq)), "attention_mask": b((rows, seq)), "positions": b((rows, 3, seq))}
    if loss:
        out["loss_mask"] = b((rows, seq))
    return out


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of an abstract pytree (largest shard per leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


# ------------------------------------------------------------------------------------------------ rows
@dataclasses.dataclass
class Row:
    stage: str
    step: str
    topology: str
    chips: int
    hbm_gb: float
    params: int
    global_batch: int
    seq_len: int
    shapes: str
    argument_gb: float | None = None
    output_gb: float | None = None
    alias_gb: float | None = None
    temp_gb: float | None = None
    resident_gb: float = 0.0
    peak_gb: float | None = None
    fits: bool = False
    headroom: float | None = None
    flops: float = 0.0
    step_time_s: float | None = None
    mfu: float | None = None
    compile_s: float = 0.0
    xla_flops: float | None = None  # XLA's cost analysis of the compiled per-chip program: flops and
    xla_bytes: float | None = None  # bytes accessed, as its cost model counts them (an estimate)
    error: str | None = None

    def text(self) -> str:
        if self.peak_gb is None:
            mem = f"error: {self.error}"
        else:
            mem = (
                f"args {self.argument_gb:6.2f} out {self.output_gb:6.2f} alias {self.alias_gb:6.2f} "
                f"temp {self.temp_gb:6.2f} resident {self.resident_gb:5.2f} peak {self.peak_gb:6.2f}/"
                f"{self.hbm_gb:.1f} GiB {'fits' if self.fits else 'DOES NOT FIT'} "
                f"headroom {100 * self.headroom:5.1f}%"
            )
            if self.error:
                mem += f" ({self.error})"
        perf = ""
        if self.step_time_s is not None:
            perf = f" | {self.flops / 1e12:9.1f} TFLOP  roofline {self.step_time_s:8.3f} s  "
            perf += f"MFU {100 * (self.mfu or 0):4.1f}%"
        return (
            f"{self.stage:10s} {self.step:9s} {self.topology:8s} {self.chips:3d} chips | params "
            f"{self.params / 1e9:5.2f}B | batch {self.global_batch:4d} {self.shapes:34s} | {mem}{perf}"
        )


_OOM = re.compile(r"HLO temporaries \(([\d.]+)([GMK])\) exceed(?:s)? available HBM \(([\d.]+)([GMK])\)")


def _gib(value: str, unit: str) -> float:
    return float(value) * {"G": 1, "M": 1 / 1024, "K": 1 / 1024**2}[unit]


def compile_row(row: Row, jitted, args: tuple, *, mesh, resident_bytes: int = 0) -> Row:
    """Compile the jitted program `jitted` (a jax.jit object: its own shardings and donation) for the abstract
    `args` under `mesh`; fill the memory columns (an OOM becomes a row, not a traceback)."""
    t0 = time.perf_counter()
    row.resident_gb = resident_bytes / GiB
    try:
        with jax.set_mesh(mesh):
            compiled = jitted.lower(*args).compile()
    except Exception as e:
        msg = str(e)
        m = _OOM.search(msg)
        row.compile_s = time.perf_counter() - t0
        if m:
            temp = _gib(m.group(1), m.group(2))
            row.hbm_gb = _gib(m.group(3), m.group(4))
            row.temp_gb, row.argument_gb, row.output_gb, row.alias_gb = temp, 0.0, 0.0, 0.0
            row.peak_gb = temp + row.resident_gb
            row.fits, row.headroom = False, 1 - row.peak_gb / row.hbm_gb
            row.error = "RESOURCE_EXHAUSTED at compile time (temporaries only)"
        else:
            lines = [ln for ln in msg.strip().splitlines() if ln.strip()]
            row.error = (lines[0] if lines else type(e).__name__)[:300]
        return row
    row.compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, list) else (cost or {})
    row.xla_flops, row.xla_bytes = cost.get("flops"), cost.get("bytes accessed")
    ma = compiled.memory_analysis()
    row.argument_gb = ma.argument_size_in_bytes / GiB
    row.output_gb = ma.output_size_in_bytes / GiB
    row.alias_gb = ma.alias_size_in_bytes / GiB
    row.temp_gb = ma.temp_size_in_bytes / GiB
    row.peak_gb = row.argument_gb + row.output_gb - row.alias_gb + row.temp_gb + row.resident_gb
    row.fits = row.peak_gb <= row.hbm_gb
    row.headroom = 1 - row.peak_gb / row.hbm_gb
    return row


def roofline(row: Row, chip: Chip, *, flops: float, executed: float, hbm_bytes_per_chip: float) -> Row:
    t = max(executed / (row.chips * chip.peak_bf16), hbm_bytes_per_chip / chip.hbm_bw)
    row.flops, row.step_time_s = flops, t
    row.mfu = flops / (t * row.chips * chip.peak_bf16) if t > 0 else None
    return row
