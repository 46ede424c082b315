"""Qwen2-VL image preprocessing in NumPy + Pillow (no torch): the same numbers as transformers'
PIL-backend Qwen2VLImageProcessor.

Steps: to 8-bit RGB (grayscale CXRs are replicated to 3 channels) -> smart_resize to multiples of
patch*merge within [min_pixels, max_pixels] -> bicubic resize in PIL -> x/255 -> CLIP mean/std ->
patches in merge-window order, the single frame repeated temporal_patch_size times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MAX_PIXELS = 262_144  # the DeepMedix-R1 checkpoint's processor setting (512^2)
DEFAULT_MIN_PIXELS = 56 * 56


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with min_pixels <= h*w <= max_pixels, aspect kept.

    Python's round (banker's rounding) is used on purpose: it is what the reference does.
    """
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(
    height: int,
    width: int,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) the model sees; boxes in model-input pixels live in this frame."""
    return smart_resize(height, width, factor=patch_size * merge_size, min_pixels=min_pixels, max_pixels=max_pixels)


def patch_rows(
    height: int,
    width: int,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """Patches (rows of pixel_values) of one image of this size after the resize."""
    h, w = resized_size(
        height, width, patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
    )
    return (h // patch_size) * (w // patch_size)


def max_patch_rows(max_pixels: int, *, patch_size: int = 14, merge_size: int = 2) -> int:
    """An upper bound on the patches of an image of any aspect ratio under max_pixels: a square one resize
    factor wider than the largest square that fits."""
    factor = patch_size * merge_size
    side = int(np.sqrt(max_pixels)) // factor * factor + factor
    return (side // patch_size) ** 2


def num_image_tokens(grid_thw, merge_size: int = 2) -> np.ndarray:
    """Image tokens per image: t*h*w / merge^2."""
    g = np.asarray(grid_thw).reshape(-1, 3)
    return (g.prod(axis=1) // merge_size**2).astype(np.int64)


def to_rgb_uint8(image) -> Image.Image:
    """PIL image (any mode) or array (2-D gray float in [0,1] or uint8/uint16; HxWx3/4 uint8) -> RGB PIL."""
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if arr.dtype != np.uint8:
            raise ValueError(f"colour arrays must be uint8, got {arr.dtype}")
        return Image.fromarray(arr[..., :3], "RGB")
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale or HxWx3 image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        gray = arr
    elif arr.dtype == np.uint16:
        gray = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image contains NaN or inf")
        gray = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    return Image.fromarray(gray, "L").convert("RGB")


def _patchify(image_chw: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    c, h, w = image_chw.shape
    gh, gw = h // patch_size, w // patch_size
    p = image_chw.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    p = p.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, ph, pw)
    p = np.broadcast_to(p[:, :, :, :, :, None], p.shape[:5] + (temporal_patch_size,) + p.shape[5:])
    return p.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size)


def preprocess_images(
    images: Sequence,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> dict[str, np.ndarray]:
    """-> {'pixel_values': float32 [num_patches, 3*T*p*p], 'image_grid_thw': int64 [num_images, 3]}."""
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None, None]
    patches, grids = [], []
    for i, image in enumerate(images):
        try:
            pil = to_rgb_uint8(image)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
        h, w = pil.height, pil.width
        rh, rw = resized_size(
            h, w, patch_size=patch_size, merge_size=merge_size, min_pixels=min_pixels, max_pixels=max_pixels
        )
        arr = np.asarray(pil.resize((rw, rh), resample=Image.Resampling.BICUBIC)).transpose(2, 0, 1)
        arr = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
        arr = (arr - mean) / std
        patches.append(_patchify(arr, patch_size, merge_size, temporal_patch_size))
        grids.append((1, rh // patch_size, rw // patch_size))
    if not patches:
        raise ValueError("preprocess_images needs at least one image")
    return {"pixel_values": np.concatenate(patches).astype(np.float32), "image_grid_thw": np.asarray(grids, np.int64)}
