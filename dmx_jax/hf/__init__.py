"""Hugging Face Qwen2.5-VL import/export through one name-mapping table; LoRA adapters as PEFT folders."""

from dmx_jax.hf.adapter import load_adapter, save_adapter
from dmx_jax.hf.load import CheckpointError, load_pretrained, read_config, tensor_index
from dmx_jax.hf.save import parse_size, save_pretrained
