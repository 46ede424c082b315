"""Export a dmx-jax Qwen2.5-VL as a Hugging Face folder that transformers opens.

Writes config.json, generation_config.json and safetensors in the hub layout (`model.layers.*`,
`visual.*`, PyTorch [out, in] weights), sharded with model.safetensors.index.json above max_shard_size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from flax import nnx

from dmx_jax.hf import mapping
from dmx_jax.model.config import ModelConfig, to_hf_config

_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS | {"": 1}:
        raise ValueError(f"max_shard_size {size!r}: expected bytes or a size like '200KB' / '5GB'")
    return int(float(m.group(1)) * _UNITS.get(m.group(2).upper(), 1))


def hf_tensors(params: dict, cfg: ModelConfig):
    """Yield (on-disk name, numpy array) in table order, one tensor at a time."""
    for param_path, template, _, to_hf in mapping.rows(cfg):
        value = params
        for k in param_path.split("."):
            value = value[k]
        value = np.asarray(value)
        names = mapping.hf_names(template, cfg, param_path)
        if mapping.num_layers(param_path, cfg) is not None:
            for i, name in enumerate(names):
                yield name, np.ascontiguousarray(to_hf(value[i], cfg))
        else:
            yield names[0], np.ascontiguousarray(to_hf(value, cfg))


def save_pretrained(model, path: str | Path, *, max_shard_size: int | str = "5GB", config: ModelConfig | None = None) -> Path:
    """Write `model` (a Qwen25VL, or a pure param dict with `config=`) as a Hugging Face folder."""
    from safetensors.numpy import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, dict):
        if config is None:
            raise ValueError("save_pretrained(params_dict, ...) needs config=")
        params, cfg = model, config
    else:
        cfg = config or model.cfg
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    limit = parse_size(max_shard_size)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in hf_tensors(params, cfg):
        if shards[-1] and size + arr.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata=meta)
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / fname), metadata=meta)
            for k, v in shard.items():
                weight_map[k] = fname
                total += v.nbytes
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    hf_cfg = to_hf_config(cfg)
    hf_cfg["dtype"] = str(next(iter(shards[0].values())).dtype)
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (path / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
         "do_sample": False}, indent=2))
    return path
