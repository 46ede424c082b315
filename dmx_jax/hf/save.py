"""Export a dmx-jax Qwen2.5-VL as a Hugging Face folder that transformers opens.

Writes config.json, generation_config.json and safetensors in the hub layout (`model.layers.*`,
`visual.*`, PyTorch [out, in] weights), sharded with model.safetensors.index.json above max_shard_size.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from dmx_jax.hf import mapping
from dmx_jax.model import lora
from dmx_jax.model.config import ModelConfig, to_hf_config

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS | {"": 1}:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '200KB' / '5GB'")
    return int(float(m.group(1)) * _UNITS.get(m.group(2).upper(), 1))


def _host(value) -> np.ndarray:
    """A parameter as one host numpy array (gathers shards held by other processes)."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(value)


def _param(params: dict, path: str):
    for k in path.split("."):
        params = params[k]
    return params


def tensor_sizes(params: dict, cfg: ModelConfig) -> list[tuple[str, int]]:
    """(on-disk name, bytes) in table order, from shapes only (nothing is materialised)."""
    out = []
    for param_path, template, _, _ in mapping.rows(cfg):
        value = _param(params, param_path)
        names = mapping.hf_names(template, cfg, param_path)
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        out += [(name, nbytes // len(names)) for name in names]
    return out


def hf_tensors(params: dict, cfg: ModelConfig):
    """Yield (on-disk name, numpy array) in table order, one tensor at a time."""
    for param_path, template, _, to_hf in mapping.rows(cfg):
        value = _host(_param(params, param_path))
        names = mapping.hf_names(template, cfg, param_path)
        if mapping.num_layers(param_path, cfg) is not None:
            for i, name in enumerate(names):
                yield name, np.ascontiguousarray(to_hf(value[i], cfg))
        else:
            yield names[0], np.ascontiguousarray(to_hf(value, cfg))


def plan_shards(sizes: list[tuple[str, int]], limit: int) -> list[list[str]]:
    """Greedy split of tensors (in order) into shards of at most `limit` bytes (a bigger tensor sits alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def save_pretrained(
    model, path: str | Path, *, max_shard_size: int | str = "5GB", config: ModelConfig | None = None
) -> Path:
    """Write `model` (a Qwen25VL, or a pure param dict with `config=`) as a Hugging Face folder; LoRA adapters
    are merged into their kernels (dmx_jax.hf.adapter.save_adapter writes them as a PEFT folder instead).

    Shards are planned from shapes and written one at a time, so the host holds at most one shard plus
    one (stacked) parameter. In a multi-process run every process gathers and process 0 writes.
    """
    path = Path(path)
    if isinstance(model, dict):
        if config is None:
            raise ValueError("save_pretrained(params_dict, ...) needs config=")
        params, cfg = model, config
    else:
        cfg = config or model.cfg
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if cfg.text.lora.rank:  # a plain checkpoint: adapters folded into their kernels
        params = lora.merge_adapters(params, cfg.text.lora)
        cfg = cfg.replace(text=dataclasses.replace(cfg.text, lora=lora.LoraConfig()))
    writer = jax.process_index() == 0
    if writer:
        path.mkdir(parents=True, exist_ok=True)
    sizes = tensor_sizes(params, cfg)
    plan = plan_shards(sizes, parse_size(max_shard_size))
    files = (
        ["model.safetensors"]
        if len(plan) == 1
        else [f"model-{i:05d}-of-{len(plan):05d}.safetensors" for i in range(1, len(plan) + 1)]
    )
    shard_of = {name: i for i, names in enumerate(plan) for name in names}
    meta = {"format": "pt"}
    current: dict[str, np.ndarray] = {}
    dtype = None
    for name, arr in hf_tensors(params, cfg):
        dtype = dtype or str(arr.dtype)
        current[name] = arr
        i = shard_of[name]
        if len(current) == len(plan[i]):
            if writer:
                save_file(current, str(path / files[i]), metadata=meta)
            current = {}
    if not writer:
        return path
    if len(plan) > 1:
        index = {
            "metadata": {"total_size": sum(n for _, n in sizes)},
            "weight_map": {name: files[i] for name, i in shard_of.items()},
        }
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    hf_cfg = to_hf_config(cfg)
    hf_cfg["dtype"] = hf_cfg["text_config"]["dtype"] = hf_cfg["vision_config"]["dtype"] = dtype
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": cfg.bos_token_id,
                "eos_token_id": cfg.eos_token_id,
                "pad_token_id": cfg.pad_token_id,
                "do_sample": False,
            },
            indent=2,
        )
    )
    return path
