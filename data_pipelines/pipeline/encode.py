"""One Example -> fixed-shape arrays padded to the smallest (seq_len, patch_budget) bucket that fits.

The project's only row encoder: the synthetic default, the real-data grain pipeline, evaluation prompts, RL
prompts and the inference CLI all call it. Training rows are right-padded with an answer-only loss mask,
prompt rows (prompt_only) left-padded with a zero loss mask; M-RoPE positions and the vision metadata are
padded to the bucket too, and host-side fields travel in row['meta']. An `image_cache` dict shares one
decoded, preprocessed pixel array between the rows of one example (its SFT, reasoning and prompt rows).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.formatting import render
from data_pipelines.image_io import decode_image_bytes, load_image
from data_pipelines.schema import Example
from dmx_jax.model.config import VisionConfig
from dmx_jax.model.positions import rope_index
from dmx_jax.model.vision import vision_inputs
from dmx_jax.processing.image import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, num_image_tokens, preprocess_images

Bucket = tuple[int, int]  # (seq_len, patch_budget)


class DoesNotFit(ValueError):
    """An example longer than every bucket (tokens or image patches); the message names the example."""


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """How an Example becomes arrays. vision: the model's vision config (patch / merge sizes, windows).
    reasoning: train on the reasoning trace (cold start / RL format). prompt_only: generation prompts.
    instruction_first: the reasoning instruction before the question (formatting.render)."""

    vision: VisionConfig = VisionConfig()
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    reasoning: bool = False
    prompt_only: bool = False
    instruction_first: bool = False


def check_buckets(buckets: Sequence[Sequence[int]]) -> tuple[Bucket, ...]:
    """Buckets as sorted unique (seq_len, patch_budget) int pairs, both positive; tried in this order."""
    out = []
    for b in buckets:
        if len(b) != 2 or any(int(v) != v or int(v) <= 0 for v in b):
            raise ValueError(f"buckets: each bucket is (seq_len, patch_budget) with positive ints, got {b!r}")
        out.append((int(b[0]), int(b[1])))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"buckets: need at least one bucket and no duplicates, got {list(buckets)!r}")
    return tuple(sorted(out))


def image_array(image: Any, name: str) -> np.ndarray:
    """A stored image (array, encoded bytes or a path) -> 2-D float32 in [0, 1]."""
    if isinstance(image, (bytes, bytearray)):
        return decode_image_bytes(bytes(image), name)
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    return np.asarray(image, np.float32)


def _pixels(example: Example, cfg: EncodingConfig, cache: dict | None) -> tuple:
    """(images, grid [N, 3], pixel_values [P, D]) of an example, looked up in / stored to `cache` by example id."""
    v = cfg.vision
    key = (
        example.example_id,
        cfg.min_pixels,
        cfg.max_pixels,
        v.patch_size,
        v.temporal_patch_size,
        v.spatial_merge_size,
    )
    if cache is not None and key in cache:
        return cache[key]
    images = [image_array(im, f"{example.example_id} image {k}") for k, im in enumerate(example.images)]
    proc = preprocess_images(
        images,
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        merge_size=v.spatial_merge_size,
    )
    out = (images, proc["image_grid_thw"], proc["pixel_values"])
    if cache is not None:
        cache[key] = out
    return out


def _measure(example: Example, tokenizer, cfg: EncodingConfig, cache: dict | None = None) -> tuple:
    """(images, grid [N,3], pixel_values [P, D] unpadded, rendered tokens, resized (w, h) per image)."""
    v = cfg.vision
    images, grid, pixel_values = _pixels(example, cfg, cache)
    resized = [(int(g[2]) * v.patch_size, int(g[1]) * v.patch_size) for g in grid]
    r = render(
        example,
        tokenizer,
        list(num_image_tokens(grid, v.spatial_merge_size)),
        resized,
        reasoning=cfg.reasoning,
        with_answer=not cfg.prompt_only,
        instruction_first=cfg.instruction_first,
    )
    return images, grid, pixel_values, r, resized


def _pad(example: Example, tokenizer, cfg: EncodingConfig, measured: tuple, bucket: Bucket) -> dict:
    images, grid, pv, r, resized = measured
    seq_len, patch_budget = bucket
    n = len(r["input_ids"])
    pad = seq_len - n
    pv = np.concatenate([pv, np.zeros((patch_budget - pv.shape[0], pv.shape[1]), np.float32)])
    fill = np.full(pad, tokenizer.pad_id, np.int32)
    if cfg.prompt_only:  # left-padded generation prompt
        ids = np.concatenate([fill, r["input_ids"]])
        mask = np.concatenate([np.zeros(pad, np.int32), np.ones(n, np.int32)])
        loss_mask = np.zeros(seq_len, np.int32)
    else:
        ids = np.concatenate([r["input_ids"], fill])
        mask = np.concatenate([np.ones(n, np.int32), np.zeros(pad, np.int32)])
        loss_mask = np.concatenate([r["loss_mask"], np.zeros(pad, np.int32)])
    pos, delta = rope_index(
        ids[None],
        grid,
        mask[None],
        spatial_merge_size=cfg.vision.spatial_merge_size,
        image_token_id=tokenizer.image_pad_id,
    )
    (w, h), (rw, rh) = example.image_sizes[example.box_image_index], resized[example.box_image_index]
    boxes = [(b.x_min * rw / w, b.y_min * rh / h, b.x_max * rw / w, b.y_max * rh / h) for b in example.boxes]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "loss_mask": loss_mask,
        "positions": pos[:, 0],
        "deltas": delta[0],
        "pixel_values": pv,
        "vision_inputs": vision_inputs(grid, cfg.vision, pad_to=patch_budget),
        "meta": {
            "example_id": example.example_id,
            "task": example.task,
            "question_type": example.question_type,
            "target": example.target if cfg.prompt_only else r["answer"],
            "prompt": example.prompt,
            "boxes": boxes,
            "image_size": (rw, rh),
            "labels": example.labels,
            "image": images[-1],
            "reference_trace": example.meta.get("reasoning", ""),
            "bucket": bucket,
        },
    }


def measure(example: Example, tokenizer, cfg: EncodingConfig, image_cache: dict | None = None) -> tuple[int, int]:
    """(tokens, image patches) of the example's row before padding: the smallest (seq_len, patch_budget)."""
    measured = _measure(example, tokenizer, cfg, image_cache)
    return len(measured[3]["input_ids"]), measured[2].shape[0]


def encode_to_bucket(
    example: Example, tokenizer, cfg: EncodingConfig, buckets: Sequence[Bucket], image_cache: dict | None = None
) -> tuple[int, dict]:
    """(index into buckets, row) for the first bucket (in the given order) holding the example's tokens and
    patches; DoesNotFit when none does."""
    measured = _measure(example, tokenizer, cfg, image_cache)
    tokens, patches = len(measured[3]["input_ids"]), measured[2].shape[0]
    for k, (seq_len, patch_budget) in enumerate(buckets):
        if tokens <= seq_len and patches <= patch_budget:
            return k, _pad(example, tokenizer, cfg, measured, (seq_len, patch_budget))
    raise DoesNotFit(
        f"example {example.example_id}: {tokens} tokens and {patches} patches fit no bucket "
        f"(seq_len, patch_budget) in {list(buckets)}"
    )


def encode_example(
    example: Example,
    tokenizer,
    cfg: EncodingConfig,
    *,
    seq_len: int,
    patch_budget: int,
    image_cache: dict | None = None,
) -> dict:
    """One example padded to exactly (seq_len, patch_budget); DoesNotFit when it is longer."""
    return encode_to_bucket(example, tokenizer, cfg, [(seq_len, patch_budget)], image_cache)[1]


@dataclasses.dataclass(frozen=True)
class RowEncoder:
    """encode_example with its tokenizer and config bound: row = encoder(example, seq_len=, patch_budget=).
    Picklable (grain workers) when the tokenizer is; `plain_ids` lists examples encoded without the reasoning
    format even when `cfg.reasoning` is set (cold-start replay of report rows)."""

    tokenizer: Any
    cfg: EncodingConfig
    plain_ids: frozenset = frozenset()

    def __call__(self, example: Example, *, seq_len: int, patch_budget: int, image_cache: dict | None = None) -> dict:
        cfg = dataclasses.replace(self.cfg, reasoning=False) if example.example_id in self.plain_ids else self.cfg
        return encode_example(
            example, self.tokenizer, cfg, seq_len=seq_len, patch_budget=patch_budget, image_cache=image_cache
        )
