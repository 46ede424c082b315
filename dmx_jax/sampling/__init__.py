"""KV-cache sampling with images."""

from dmx_jax.sampling.generate import Decoding, completion_positions, generate, generate_arrays, prepare_prompts
from dmx_jax.sampling.select import filter_logits, select_tokens
