"""Box converters between canonical pixel xyxy and every dataset / model convention.

Canonical form (schema.Box): (x_min, y_min, x_max, y_max) in pixels of the stored image, x right, y down.
All converters take array-likes of shape [..., 4] and return float64 (or int64 for quantised forms), so they
work on one box or a stack of boxes. `size` is always (width, height).

Conventions:
  xywh          (x, y, w, h) pixels: MS-CXR (original JPG px), ChestX-ray14 `Bbox [x,y,w,h]` (1024^2 px), RSNA.
  VinDr         x_min, y_min, x_max, y_max in original DICOM pixels: already canonical.
  normalised    xyxy divided by (w, h), in [0, 1].
  CheXinstruct  per-mille floor, capped at 999, then rounded (half-to-even) to tenths, as in
                Stanford-AIMI/CheXagent `data_chexinstruct/dataset_processors`: values 0..100 (round(99.9) = 100).
  Qwen2.5-VL    absolute integer pixels of the *resized* model input, whose size comes from smart_resize
                (sides multiples of 28, area within [min_pixels, max_pixels]).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from dmx_jax.processing import smart_resize as resize

QWEN_FACTOR = 28  # patch 14 x spatial merge 2
QWEN_MIN_PIXELS = 56 * 56  # Qwen2.5-VL processor default
QWEN_MAX_PIXELS = 262_144  # 512^2, the DeepMedix-R1 setting (paper.md §1)

Size = tuple[int, int]  # (width, height)


def _boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a trailing axis of 4, got shape {arr.shape}")
    return arr


def _scale(size: Size) -> np.ndarray:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive (width, height), got {size}")
    return np.array([w, h, w, h], dtype=np.float64)


# --------------------------------------------------------------------------------------- pixel conventions


def xywh_to_xyxy(boxes) -> np.ndarray:
    """[..., (x, y, w, h)] -> [..., (x_min, y_min, x_max, y_max)] (MS-CXR, ChestX-ray14, RSNA)."""
    b = _boxes(boxes)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_xywh(boxes) -> np.ndarray:
    b = _boxes(boxes)
    return np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def vindr_to_xyxy(boxes) -> np.ndarray:
    """VinDr-CXR x_min, y_min, x_max, y_max (original DICOM px) are canonical already; checks the order."""
    b = _boxes(boxes)
    if np.any(b[..., 2:] < b[..., :2]):
        raise ValueError("VinDr box has x_max < x_min or y_max < y_min")
    return b


def xyxy_to_vindr(boxes) -> np.ndarray:
    return _boxes(boxes)


def xyxy_to_normalized(boxes, size: Size) -> np.ndarray:
    """Pixel xyxy -> xyxy as fractions of (width, height)."""
    return _boxes(boxes) / _scale(size)


def normalized_to_xyxy(boxes, size: Size) -> np.ndarray:
    return _boxes(boxes) * _scale(size)


def clip_xyxy(boxes, size: Size) -> np.ndarray:
    """Clips pixel xyxy to the image [0, w] x [0, h]."""
    return np.clip(_boxes(boxes), 0.0, _scale(size))


# -------------------------------------------------------------------------------------------- CheXinstruct


def xyxy_to_chexinstruct(boxes, size: Size) -> np.ndarray:
    """Pixel xyxy -> CheXinstruct integer coordinates (0..100): floor(c / side * 1000), cap 999, round(/10)."""
    per_mille = np.floor(_boxes(boxes) / _scale(size) * 1000.0)  # same operation order as the reference
    per_mille = np.minimum(per_mille, 999.0)
    return np.round(per_mille / 10.0).astype(np.int64)  # numpy rounds half to even, like Python's round


def chexinstruct_to_xyxy(bins, size: Size) -> np.ndarray:
    """CheXinstruct coordinates -> pixel xyxy (the value / 100 of each side; error <= 0.0105 * side)."""
    return np.asarray(bins, dtype=np.float64) / 100.0 * _scale(size)


def format_chexinstruct_box(bins: Sequence[int], ref: str | None = None) -> str:
    """'<|box|>(x1,y1),(x2,y2)<|/box|>', prefixed with '<|ref|>phrase<|/ref|>' when ref is given."""
    x1, y1, x2, y2 = (int(v) for v in bins)
    text = f"<|box|>({x1},{y1}),({x2},{y2})<|/box|>"
    return text if ref is None else f"<|ref|>{ref}<|/ref|>{text}"


# ---------------------------------------------------------------------------------------------- Qwen2.5-VL


def smart_resize(
    height: int,
    width: int,
    *,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """(resized_height, resized_width) as Qwen2.5-VL's image processor computes it (dmx_jax.processing's)."""
    return resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def qwen_input_size(
    size: Size, *, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS
) -> Size:
    """(width', height') of the model input for a stored image of (width, height)."""
    h, w = smart_resize(size[1], size[0], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h


def xyxy_to_qwen(boxes, size: Size, resized: Size | None = None, **resize_kwargs) -> np.ndarray:
    """Pixel xyxy of the stored image -> integer xyxy in the resized Qwen2.5-VL input (rounded)."""
    resized = resized or qwen_input_size(size, **resize_kwargs)
    scaled = _boxes(boxes) / _scale(size) * _scale(resized)
    return np.clip(np.rint(scaled), 0, _scale(resized)).astype(np.int64)


def qwen_to_xyxy(boxes, size: Size, resized: Size | None = None, **resize_kwargs) -> np.ndarray:
    """Integer xyxy in the resized Qwen2.5-VL input -> pixel xyxy of the stored image."""
    resized = resized or qwen_input_size(size, **resize_kwargs)
    return _boxes(boxes) / _scale(resized) * _scale(size)


# ---------------------------------------------------------------------------------------------------- text

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX_TEXT = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")


def format_box_text(box: Sequence[float]) -> str:
    """'[x1, y1, x2, y2]' with integer coordinates (rounded half to even)."""
    if len(box) != 4:
        raise ValueError(f"a box has 4 coordinates, got {len(box)}")
    return "[" + ", ".join(str(int(v)) for v in np.rint(np.asarray(box, dtype=np.float64))) + "]"


def format_boxes_text(boxes: Sequence[Sequence[float]]) -> str:
    """Several boxes as '[x1, y1, x2, y2]; [x1, y1, x2, y2]'."""
    return "; ".join(format_box_text(b) for b in boxes)


def parse_box_texts(text: str) -> list[tuple[float, float, float, float]]:
    """Every '[a, b, c, d]' in text, in order of appearance."""
    return [tuple(float(g) for g in m.groups()) for m in _BOX_TEXT.finditer(text)]  # type: ignore[misc]
