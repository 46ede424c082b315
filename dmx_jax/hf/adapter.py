"""LoRA adapters in the PEFT folder layout: adapter_config.json + adapter_model.safetensors.

PEFT names a Linear's adapters `<module>.lora_A.weight` [r, in] and `<module>.lora_B.weight` [out, r] under the
`base_model.model.` prefix, and computes W x + (lora_alpha / r) B A x; our `lora_a` [L, in..., r] and `lora_b`
[L, r, out...] (dmx_jax.model.lora) are the same matrices transposed, with heads flattened in the order the weight
mapping uses (dmx_jax.hf.mapping). Modules are the transformers 5 in-memory names (model.language_model....).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file, save_file

from dmx_jax.model.config import ModelConfig
from dmx_jax.model.lora import GROUP, LoraConfig, kernel_split

PREFIX = "base_model.model.model.language_model.layers.{i}."
MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def adapter_tensors(params: dict, lora: LoraConfig) -> dict[str, np.ndarray]:
    """PEFT state dict of the decoder's adapters (host float32 arrays)."""
    out = {}
    layers = params["text"]["layers"]
    for t in lora.targets:
        p = layers[GROUP[t]][t]
        a, b = (np.asarray(jax.device_get(p[k]), np.float32) for k in ("lora_a", "lora_b"))
        for i in range(a.shape[0]):
            name = PREFIX.format(i=i) + MODULES[t]
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[i].reshape(-1, lora.rank).T)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[i].reshape(lora.rank, -1).T)
    return out


def save_adapter(params: dict, cfg: ModelConfig, path: str | Path, *, base_model: str | None = None) -> Path:
    """Write the adapters of `params` as a PEFT LoRA folder (loads with peft.PeftModel.from_pretrained onto the
    transformers Qwen2.5-VL that `base_model` names)."""
    lora = cfg.text.lora
    if not lora.rank:
        raise ValueError("save_adapter: the model has no LoRA adapters (text.lora.rank is 0)")
    path = Path(path)
    if jax.process_index() != 0:
        adapter_tensors(params, lora)  # every process joins the gathers
        return path
    path.mkdir(parents=True, exist_ok=True)
    save_file(adapter_tensors(params, lora), str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    names = "|".join(MODULES[t].split(".")[-1] for t in lora.targets)
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": rf".*language_model\.layers\.\d+\.(self_attn|mlp)\.({names})",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "revision": None,
    }
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return path


def read_adapter_config(path: str | Path) -> LoraConfig:
    """The LoraConfig of a PEFT folder (targets read from its module regex or list); one line on what is off."""
    path = Path(path)
    try:
        c = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: cannot read the adapter config ({type(e).__name__}: {e})") from None
    if c.get("peft_type") != "LORA" or c.get("use_dora") or c.get("use_rslora"):
        raise ValueError(
            f"{path / CONFIG_FILE}: only plain LoRA adapters load (peft_type LORA, no DoRA / rsLoRA), "
            f"got peft_type={c.get('peft_type')!r}"
        )
    modules = c.get("target_modules") or []
    text = modules if isinstance(modules, str) else " ".join(modules)
    targets = tuple(t for t, m in MODULES.items() if m.split(".")[-1] in text)
    return LoraConfig(
        rank=int(c["r"]), alpha=float(c["lora_alpha"]), targets=targets, dropout=float(c.get("lora_dropout") or 0.0)
    )


def load_adapter(params: dict, cfg: ModelConfig, path: str | Path) -> tuple[dict, ModelConfig]:
    """(params with the PEFT folder's adapters, cfg with its LoraConfig): the base's own tensors are shared."""
    path = Path(path)
    lora = read_adapter_config(path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    layers = {g: dict(v) for g, v in params["text"]["layers"].items()}
    n = cfg.text.num_hidden_layers
    for t in lora.targets:
        kernel = layers[GROUP[t]][t]["kernel"]
        split = 1 + kernel_split(t)
        ins, outs = kernel.shape[1:split], kernel.shape[split:]
        a, b = [], []
        for i in range(n):
            name = PREFIX.format(i=i) + MODULES[t]
            try:
                a.append(tensors[f"{name}.lora_A.weight"].T.reshape(*ins, lora.rank))
                b.append(tensors[f"{name}.lora_B.weight"].T.reshape(lora.rank, *outs))
            except KeyError as e:
                raise ValueError(f"{path / WEIGHTS_FILE}: tensor {e.args[0]} is missing") from None
            except ValueError:
                raise ValueError(
                    f"{path / WEIGHTS_FILE}: {name} adapters do not fit a {t} kernel of shape "
                    f"{tuple(kernel.shape[1:])} at rank {lora.rank}"
                ) from None
        layers[GROUP[t]][t] = {**layers[GROUP[t]][t], "lora_a": np.stack(a), "lora_b": np.stack(b)}
    params = {**params, "text": {**params["text"], "layers": layers}}
    return params, cfg.replace(text=dataclasses.replace(cfg.text, lora=lora))
