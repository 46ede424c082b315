"""Load a Hugging Face Qwen2.5-VL folder (config.json + single or sharded safetensors) into dmx-jax.

Tensors are read one at a time through safetensors' numpy reader, transformed by the one mapping table,
cast, and placed straight into their sharding; a full second copy of the model never exists on the host.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.hf import mapping
from dmx_jax.model.config import ModelConfig, from_hf_config
from dmx_jax.model.qwen2_5_vl import Qwen25VL


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
    from safetensors import safe_open
    try:
        with safe_open(str(file), framework="numpy") as f:
            return list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise CheckpointError(f"{file}: cannot read safetensors header ({type(e).__name__}: {e})") from None


class _Reader:
    """Keeps one safetensors handle open per file; maps canonical names back to on-disk names."""

    def __init__(self, index: dict[str, Path]):
        from safetensors import safe_open
        self._open, self.index = safe_open, index
        self._handles: dict[Path, Any] = {}
        self._disk_names: dict[str, str] = {}

    def get(self, name: str) -> np.ndarray:
        file = self.index[name]
        if file not in self._handles:
            try:
                self._handles[file] = self._open(str(file), framework="numpy")
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"{file}: cannot open ({type(e).__name__}: {e})") from None
            for k in self._handles[file].keys():  # noqa: SIM118 - a safetensors safe_open handle, not a dict: no __iter__
                self._disk_names[mapping.canonical(k)] = k
        try:
            return self._handles[file].get_tensor(self._disk_names[name])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{file}: tensor {name} is unreadable ({type(e).__name__}: {e})") from None


def _set(tree: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        tree = tree[k]
    tree[keys[-1]] = value


def _get(tree: dict, path: str) -> Any:
    for k in path.split("."):
        tree = tree[k]
    return tree


def _place(value: np.ndarray, sharding) -> jax.Array:
    """A global array from a host copy: each process puts only the slices its own devices hold
    (jax.make_array_from_callback), never the whole tensor on every local device."""
    if sharding is None:
        return jnp.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_pretrained(path: str | Path, *, dtype: str | None = None, mesh: Any = None,
                    param_sharding: Callable[[tuple[str, ...], tuple[int, ...]], Any] | None = None,
                    config: ModelConfig | None = None) -> tuple[Qwen25VL, ModelConfig]:
    """(model, config) from a Hugging Face Qwen2.5-VL folder.

    dtype: parameter dtype (default float32). mesh: when given without `param_sharding`, parameters are
    placed by the training rules of dmx_jax.sharding; `param_sharding(path, shape)` overrides.
    """
    path = Path(path)
    cfg = config or read_config(path)
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    if param_sharding is None and mesh is not None:
        from dmx_jax.sharding import param_sharding_fn
        param_sharding = param_sharding_fn(mesh)
    index = tensor_index(path)
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abstract)
    target = nnx.to_pure_dict(abs_state)
    reader = _Reader(index)
    expected: set[str] = set()
    pdt = jnp.dtype(cfg.param_dtype)
    for param_path, template, to_jax, _ in mapping.rows(cfg):
        names = mapping.hf_names(template, cfg, param_path)
        expected.update(names)
        stacked = mapping.num_layers(param_path, cfg) is not None
        want = tuple(_get(target, param_path).shape)
        per_tensor = want[1:] if stacked else want
        slices = []
        for name in names:
            if name not in index:
                raise CheckpointError(f"{path}: tensor {name} is missing (needed for {param_path})")
            raw = reader.get(name)
            try:
                arr = to_jax(raw, cfg)
            except ValueError:
                arr = None
            if arr is None or tuple(arr.shape) != per_tensor:
                raise CheckpointError(f"{index[name]}: tensor {name} has shape {tuple(raw.shape)}, "
                                      f"which does not fit parameter {param_path} {per_tensor} of this config")
            slices.append(arr)
        value = np.stack(slices) if stacked else slices[0]
        value = value.astype(pdt)
        sharding = param_sharding(tuple(param_path.split(".")), value.shape) if param_sharding else None
        _set(target, param_path, _place(value, sharding))
    if cfg.tie_word_embeddings:  # some exports write the tied head anyway; the embedding is the head
        expected.add("lm_head.weight")
    unexpected = sorted(set(index) - expected)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                              f"in {index[unexpected[0]].name} (not part of a Qwen2.5-VL of this config)")
    return nnx.merge(graphdef, target), cfg
