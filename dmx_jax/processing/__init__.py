"""Image preprocessing and M-RoPE position ids in NumPy (no torch)."""

from dmx_jax.model.positions import rope_index
from dmx_jax.processing.image import (
    CLIP_MEAN,
    CLIP_STD,
    max_patch_rows,
    num_image_tokens,
    patch_rows,
    preprocess_images,
    resized_size,
    smart_resize,
    to_rgb_uint8,
)
