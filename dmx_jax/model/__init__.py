"""Qwen2.5-VL in Flax NNX: config, vision encoder, M-RoPE text decoder, joint model."""

from dmx_jax.model.config import (
    PRESETS,
    ModelConfig,
    TextConfig,
    VisionConfig,
    from_hf_config,
    qwen2_5_vl_3b,
    qwen2_5_vl_7b,
    tiny,
    to_hf_config,
)
from dmx_jax.model.positions import rope_index
from dmx_jax.model.qwen2_5_vl import Qwen25VL, init_model_cache, merge_image_features, merge_image_features_rowwise
from dmx_jax.model.text import init_cache
from dmx_jax.model.vision import vision_inputs


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
