"""Example <-> self-contained TFDS record (no TensorFlow): the feature spec and both conversions.

A record holds every Example field; images are encoded grayscale PNG bytes (8- or 16-bit), read back with
data_pipelines.image_io.decode_image_bytes (the one image reader), so a record needs no file on disk.

Lossless cases: 8-bit sources (values k/255) and 16-bit sources (k/65535) round-trip exactly; other float
images are quantised to 1/65535 (error <= 0.5/65535). Boxes are stored as float32 (exact for integer and
dyadic pixel coordinates below 2**24). `meta` is JSON with tagged tuples / numpy arrays so it round-trips
with its container types; `question_type` None is stored as "" (an empty question type is rejected).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines.image_io import ImageReadError, decode_image_bytes, load_image
from data_pipelines.schema import CHEXPERT_LABELS, Box, Example

BIT_DEPTHS = ("auto", 8, 16)
_TUPLE, _ARRAY, _ITEMS = "__tuple__", "__ndarray__", "__dict_items__"


def features():
    """The tfds FeaturesDict of one record (text comes back as bytes, sequences as lists)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 heavy

    f = tfds.features
    text = f.Text
    return f.FeaturesDict(
        {
            "example_id": text(),
            "dataset": text(),
            "task": text(),
            "split": text(),
            "prompt": text(),
            "target": text(),
            "question_type": text(),
            "images": f.Sequence(f.Tensor(shape=(), dtype=np.object_)),  # encoded grayscale PNG bytes
            "image_sizes": f.Tensor(shape=(None, 2), dtype=np.int32),  # (width, height) per image
            "boxes": f.Tensor(shape=(None, 4), dtype=np.float32),  # pixel xyxy of image box_image_index
            "box_labels": f.Sequence(text()),
            "labels": f.Tensor(shape=(len(CHEXPERT_LABELS),), dtype=np.float32),  # NaN = not mentioned
            "has_labels": f.Scalar(dtype=np.bool_),
            "box_image_index": f.Scalar(dtype=np.int32),
            "meta": text(),  # JSON (see encode_meta)
        }
    )


# --------------------------------------------------------------------------------------------- images


def encode_png(image: np.ndarray, bit_depth: int | str = "auto", name: str = "image") -> bytes:
    """2-D float image in [0, 1] (or uint8 / uint16) -> grayscale PNG bytes.

    bit_depth 'auto' writes 8 bits when the image is exactly representable on the k/255 grid, else 16.
    """
    if bit_depth not in BIT_DEPTHS:
        raise ValueError(f"{name}: bit_depth must be one of {BIT_DEPTHS}, got {bit_depth!r}")
    arr = np.asarray(image)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D grayscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        unit = arr.astype(np.float64) / 255.0
    elif arr.dtype == np.uint16:
        unit = arr.astype(np.float64) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: image has non-finite values")
        unit = np.clip(arr.astype(np.float64), 0.0, 1.0)
    else:
        raise ValueError(f"{name}: unsupported image dtype {arr.dtype}")
    if bit_depth == "auto":
        k8 = np.round(unit * 255.0)
        bit_depth = 8 if np.array_equal((k8 / 255.0).astype(np.float32), unit.astype(np.float32)) else 16
    if bit_depth == 8:
        pixels = np.round(unit * 255.0).astype(np.uint8)
    else:
        pixels = np.round(unit * 65535.0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- meta


def _tag(x: Any, where: str) -> Any:
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: _tag(v, f"{where}.{k}") for k, v in x.items()}
        return {_ITEMS: [[_tag(k, where), _tag(v, f"{where}.{k}")] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {_TUPLE: [_tag(v, where) for v in x]}
    if isinstance(x, list):
        return [_tag(v, where) for v in x]
    if isinstance(x, np.ndarray):
        return {_ARRAY: _tag(x.tolist(), where), "dtype": x.dtype.str, "shape": list(x.shape)}
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (str, bool, int, float)):
        return x
    raise TypeError(f"meta{where}: cannot store a {type(x).__name__} as JSON")


def _untag(x: Any) -> Any:
    if isinstance(x, list):
        return [_untag(v) for v in x]
    if isinstance(x, dict):
        if _TUPLE in x and len(x) == 1:
            return tuple(_untag(v) for v in x[_TUPLE])
        if _ITEMS in x and len(x) == 1:
            return {_freeze(_untag(k)): _untag(v) for k, v in x[_ITEMS]}
        if _ARRAY in x and set(x) == {_ARRAY, "dtype", "shape"}:
            return np.asarray(_untag(x[_ARRAY]), dtype=np.dtype(x["dtype"])).reshape(x["shape"])
        return {k: _untag(v) for k, v in x.items()}
    return x


def _freeze(k: Any) -> Any:
    return tuple(_freeze(v) for v in k) if isinstance(k, (list, tuple)) else k


def encode_meta(meta: Mapping[str, Any], where: str = "") -> str:
    """meta -> JSON text keeping tuples, numpy arrays and non-string keys (NaN/inf written as JSON does)."""
    try:
        return json.dumps(_tag(dict(meta), ""), sort_keys=False)
    except TypeError as e:
        raise TypeError(f"example {where}: {e}") from None


def decode_meta(text: str | bytes) -> dict[str, Any]:
    return _untag(json.loads(text))


# ----------------------------------------------------------------------------------------- conversion


def _image_array(image: Any, where: str) -> np.ndarray:
    """An Example image (array, encoded bytes or a path) -> array; a read failure names the example."""
    if isinstance(image, np.ndarray):
        return image
    try:
        return decode_image_bytes(bytes(image), where) if isinstance(image, (bytes, bytearray)) else load_image(image)
    except ImageReadError as e:
        raise ImageReadError(e.path, f"{where}: {e.reason}") from e


def example_to_record(example: Example, bit_depth: int | str = "auto") -> dict[str, Any]:
    """Example (images as paths or arrays) -> a record dict for `features()` (images PNG-encoded)."""
    eid = example.example_id
    if example.question_type == "":
        raise ValueError(f"example {eid}: question_type '' is reserved for None")
    images = [
        encode_png(_image_array(im, f"example {eid} image {k}"), bit_depth, name=f"example {eid} image {k}")
        for k, im in enumerate(example.images)
    ]
    boxes = np.asarray([b.as_tuple() for b in example.boxes], np.float32).reshape(-1, 4)
    labels = (
        np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
        if example.labels is None
        else np.asarray(example.labels, np.float32)
    )
    return {
        "example_id": eid,
        "dataset": example.dataset,
        "task": example.task,
        "split": example.split,
        "prompt": example.prompt,
        "target": example.target,
        "question_type": example.question_type or "",
        "images": images,
        "image_sizes": np.asarray(example.image_sizes, np.int32).reshape(-1, 2),
        "boxes": boxes,
        "box_labels": [b.label for b in example.boxes],
        "labels": labels,
        "has_labels": example.labels is not None,
        "box_image_index": int(example.box_image_index),
        "meta": encode_meta(example.meta, eid),
    }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def record_to_example(record: Mapping[str, Any], *, decode_images: bool = True) -> Example:
    """A record read back from a tfds data source (text as bytes) -> Example.

    decode_images=False keeps the PNG bytes in Example.images (decode later with decode_image_bytes).
    """
    eid = _text(record["example_id"])
    raw = list(record["images"])
    images = tuple(
        decode_image_bytes(bytes(b), name=f"{eid} image {k}") if decode_images else bytes(b) for k, b in enumerate(raw)
    )
    boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4)
    box_labels = [_text(s) for s in record["box_labels"]]
    if len(box_labels) != len(boxes):
        raise ValueError(f"record {eid}: {len(boxes)} boxes but {len(box_labels)} box_labels")
    qtype = _text(record["question_type"])
    return Example(
        example_id=eid,
        dataset=_text(record["dataset"]),
        task=_text(record["task"]),
        images=images,
        image_sizes=tuple((int(w), int(h)) for w, h in np.asarray(record["image_sizes"]).reshape(-1, 2)),
        prompt=_text(record["prompt"]),
        target=_text(record["target"]),
        boxes=tuple(Box(*(float(v) for v in b), label=lab) for b, lab in zip(boxes, box_labels)),
        labels=np.asarray(record["labels"], np.float32).copy() if bool(record["has_labels"]) else None,
        question_type=qtype or None,
        split=_text(record["split"]),
        meta=decode_meta(record["meta"]),
        box_image_index=int(record["box_image_index"]),
    )
