"""Hugging Face Qwen2.5-VL import/export through one name-mapping table."""
from dmx_jax.hf.load import CheckpointError, load_pretrained, read_config, tensor_index
from dmx_jax.hf.save import parse_size, save_pretrained
