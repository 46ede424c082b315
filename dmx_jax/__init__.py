"""dmx-jax: DeepMedix-R1 (grounded chest X-ray reasoning) in JAX/Flax.

Import flow: experiments -> training/evaluation -> sampling, rewards, sharding -> model, processing.
Nothing here imports torch, transformers or experiments. What a library user needs is re-exported here:

    model, cfg = dmx_jax.load_pretrained("/data/Qwen2.5-VL-7B-Instruct")   # HF folder -> (Qwen25VL, ModelConfig)
    tokens = dmx_jax.generate(model, input_ids, pixel_values=..., image_grid_thw=..., max_new_tokens=256)
    dmx_jax.save_pretrained(model, "/tmp/export")                       # -> HF folder transformers can open

Rewards (`dmx_jax.rewards.score_texts`, `paper_reward`) and metrics (`dmx_jax.eval`) live in their packages.
"""

from dmx_jax.hf import load_pretrained, save_pretrained
from dmx_jax.model import ModelConfig, Qwen25VL, preset
from dmx_jax.processing import preprocess_images
from dmx_jax.sampling.generate import generate

__version__ = "0.1.0"
__all__ = ["ModelConfig", "Qwen25VL", "generate", "load_pretrained", "preprocess_images", "preset", "save_pretrained"]
