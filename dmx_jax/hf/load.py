"""Load a Hugging Face Qwen2.5-VL folder (config.json + single or sharded safetensors) into dmx-jax.

Shapes come from the safetensors headers; every parameter is then built with jax.make_array_from_callback,
whose callback reads only the requested shard from the file (safetensors' lazy get_slice, with the mapping
table's transposes / head splits applied per slice by dmx_jax.hf.slicing) and casts it. A process therefore
reads only what its own devices hold, and when its shards tile one block (a single-host slice holds them all)
that block is read once and cut in memory; without a sharding the whole tensor is read once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from dmx_jax.hf import mapping, slicing
from dmx_jax.model import lora
from dmx_jax.model.config import ModelConfig, from_hf_config
from dmx_jax.model.qwen2_5_vl import Qwen25VL
from dmx_jax.sharding import param_sharding_fn


class CheckpointError(ValueError):
    """A Hugging Face checkpoint folder that does not match the model (names the tensor and file)."""


def read_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face Qwen2.5-VL folder)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    try:
        return from_hf_config(raw, source=str(cfg_file))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def tensor_index(path: str | Path) -> dict[str, Path]:
    """Canonical tensor name -> safetensors file, from the index json or the single file."""
    path = Path(path)
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index_file}: malformed index ({e})") from None
        out = {mapping.canonical(k): path / v for k, v in weight_map.items()}
        for f in set(out.values()):
            if not f.is_file():
                raise CheckpointError(f"{index_file}: lists {f.name}, which is missing")
        return out
    single = path / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    return {mapping.canonical(k): single for k in _keys(single)}


def _keys(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="numpy") as f:
            return list(f.keys())
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read safetensors header ({type(e).__name__}: {e})") from None


class _Reader:
    """Keeps one safetensors handle open per file; maps canonical names back to on-disk names."""

    def __init__(self, index: dict[str, Path]):
        self._open, self.index = safe_open, index
        self._handles: dict[Path, Any] = {}
        self._disk_names: dict[str, str] = {}

    def _handle(self, name: str):
        file = self.index[name]
        if file not in self._handles:
            try:
                self._handles[file] = self._open(str(file), framework="numpy")
            except Exception as e:
                raise CheckpointError(f"{file}: cannot open ({type(e).__name__}: {e})") from None
            for k in self._handles[file].keys():  # noqa: SIM118 - a safetensors safe_open handle, not a dict: no __iter__
                self._disk_names[mapping.canonical(k)] = k
        return self._handles[file]

    def _unreadable(self, name: str, e: Exception) -> CheckpointError:
        return CheckpointError(f"{self.index[name]}: tensor {name} is unreadable ({type(e).__name__}: {e})")

    def shape(self, name: str) -> tuple[int, ...]:
        """The on-disk shape from the header (nothing is read)."""
        handle = self._handle(name)
        try:
            return tuple(handle.get_slice(self._disk_names[name]).get_shape())
        except Exception as e:
            raise self._unreadable(name, e) from None

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """Only the block `index` (on-disk layout) of one tensor, through safetensors' lazy get_slice."""
        handle = self._handle(name)
        try:
            return handle.get_slice(self._disk_names[name])[index]
        except Exception as e:
            raise self._unreadable(name, e) from None


def _set(tree: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        tree = tree[k]
    tree[keys[-1]] = value


def _get(tree: dict, path: str) -> Any:
    for k in path.split("."):
        tree = tree[k]
    return tree


def _reader_for(
    reader: _Reader, names: list[str], hf_shape: tuple[int, ...], layout: slicing.Layout, stacked: bool, dtype
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """index (target order, leading layer axis when stacked) -> that block, read from the file and cast."""

    def read(index: tuple[slice, ...]) -> np.ndarray:
        if not stacked:
            return slicing.read_block(lambda ix: reader.read(names[0], ix), hf_shape, layout, index).astype(dtype)
        lo, hi, _ = index[0].indices(len(names))
        return np.stack(
            [slicing.read_block(lambda ix, n=n: reader.read(n, ix), hf_shape, layout, index[1:]) for n in names[lo:hi]]
        ).astype(dtype)

    return read


def local_block(shape: tuple[int, ...], indices) -> tuple[tuple[int, int], ...] | None:
    """The one block covering this process's shards (indices: each local device's index tuple), when the
    distinct shards tile it exactly (no element read that no local device holds); else None."""
    keys = {tuple(s.indices(n)[:2] for s, n in zip(index, shape)) for index in indices}
    lo = [min(k[d][0] for k in keys) for d in range(len(shape))]
    hi = [max(k[d][1] for k in keys) for d in range(len(shape))]
    held = sum(math.prod(b - a for a, b in k) for k in keys)
    return tuple(zip(lo, hi)) if held == math.prod(b - a for a, b in zip(lo, hi)) else None


def _place(shape: tuple[int, ...], read: Callable[[tuple[slice, ...]], np.ndarray], sharding, dtype) -> jax.Array:
    """A global array whose every addressable shard is read straight from the file: each process reads only
    the slices its own devices hold (jax.make_array_from_callback). When those slices tile one block (one
    process holding every shard, or a contiguous run of them) the block is read once, in one request per
    tensor range, and cut in memory: few large reads instead of one strided read per shard (slow from a
    mounted bucket); otherwise each distinct slice is read once."""
    if sharding is None:
        return jnp.asarray(read(tuple(slice(0, n) for n in shape)))
    local = list(sharding.addressable_devices_indices_map(shape).values())
    block = local_block(shape, local) if len(local) > 1 else None
    cache: dict[tuple, np.ndarray] = {}

    def shard(index):
        key = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
        if key in cache:
            return cache[key]
        if block is None:
            cache[key] = read(tuple(slice(*k) for k in key))
            return cache[key]
        if block not in cache:
            cache[block] = read(tuple(slice(*k) for k in block))
        cache[key] = cache[block][tuple(slice(a - b0, b - b0) for (a, b), (b0, _) in zip(key, block))]
        return cache[key]

    return jax.make_array_from_callback(shape, sharding, shard, dtype=dtype)


def load_pretrained(
    path: str | Path,
    *,
    dtype: str | None = None,
    mesh: Any = None,
    param_sharding: Callable[[tuple[str, ...], tuple[int, ...]], Any] | None = None,
    config: ModelConfig | None = None,
) -> tuple[Qwen25VL, ModelConfig]:
    """(model, config) from a Hugging Face Qwen2.5-VL folder.

    dtype: parameter dtype (default float32). mesh: when given without `param_sharding`, parameters are
    placed by the training rules of dmx_jax.sharding; `param_sharding(path, shape)` overrides.
    """
    path = Path(path)
    cfg = config or read_config(path)
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    if param_sharding is None and mesh is not None:
        param_sharding = param_sharding_fn(mesh)
    index = tensor_index(path)
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    target = nnx.to_pure_dict(abs_state)
    reader = _Reader(index)
    expected: set[str] = set()
    pdt = jnp.dtype(cfg.param_dtype)
    for param_path, template, _, _ in mapping.rows(cfg):
        names = mapping.hf_names(template, cfg, param_path)
        expected.update(names)
        stacked = mapping.num_layers(param_path, cfg) is not None
        want = tuple(_get(target, param_path).shape)
        per_tensor = want[1:] if stacked else want
        hf_shape, layout = None, None
        for name in names:
            if name not in index:
                raise CheckpointError(f"{path}: tensor {name} is missing (needed for {param_path})")
            shape = reader.shape(name)
            try:
                lay = mapping.layout(param_path, shape, cfg)
                got = slicing.target_shape(lay, shape)
            except (ValueError, IndexError, ZeroDivisionError):
                got = None
            if got != per_tensor or (hf_shape is not None and shape != hf_shape):
                raise CheckpointError(
                    f"{index[name]}: tensor {name} has shape {shape}, "
                    f"which does not fit parameter {param_path} {per_tensor} of this config"
                )
            hf_shape, layout = shape, lay
        read = _reader_for(reader, names, hf_shape, layout, stacked, pdt)
        sharding = param_sharding(tuple(param_path.split(".")), want) if param_sharding else None
        _set(target, param_path, _place(want, read, sharding, pdt))
    if cfg.text.lora.rank:  # fresh adapters on the loaded base (B = 0: the checkpoint's own function)
        layers = target["text"]["layers"]
        kernels = {t: layers[lora.GROUP[t]][t]["kernel"] for t in cfg.text.lora.targets}
        for (group, name, leaf), value in lora.init_adapters(kernels, cfg.text.lora, jax.random.key(0)).items():
            sharding = param_sharding(("text", "layers", group, name, leaf), value.shape) if param_sharding else None
            layers[group][name][leaf] = jax.device_put(value, sharding) if sharding else value
    if cfg.tie_word_embeddings:  # some exports write the tied head anyway; the embedding is the head
        expected.add("lm_head.weight")
    unexpected = sorted(set(index) - expected)
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
            f"in {index[unexpected[0]].name} (not part of a Qwen2.5-VL of this config)"
        )
    return nnx.merge(graphdef, target), cfg
