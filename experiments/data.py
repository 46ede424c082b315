"""Static-shape batches from Examples for the experiment driver (synthetic default).

Each example becomes fixed-length arrays (seq_len tokens, patch_budget patches, batch-major leaves), so
every jitted step compiles once. An example that does not fit raises before training, naming its id.
The iterator is deterministic in (seed, position) and exposes get_state/set_state for exact resume.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from data_pipelines.formatting import render
from data_pipelines.image_io import load_image
from data_pipelines.schema import Example
from dmx_jax.model import rope_index, vision_inputs
from dmx_jax.processing import num_image_tokens, preprocess_images


class ExampleTooLong(ValueError):
    pass


def _images(example: Example, patch_budget: int, min_pixels: int, max_pixels: int, cache: dict | None):
    """(images, grid, pixel_values padded to patch_budget); with `cache`, computed once per example id so the
    SFT, reasoning and prompt rows of one example share one pixel array."""
    key = (example.example_id, patch_budget, min_pixels, max_pixels)
    if cache is not None and key in cache:
        return cache[key]
    images = [load_image(im) if isinstance(im, (str, os.PathLike)) else np.asarray(im, np.float32)
              for im in example.images]
    proc = preprocess_images(images, min_pixels=min_pixels, max_pixels=max_pixels)
    grid, pv = proc["image_grid_thw"], proc["pixel_values"]
    if pv.shape[0] > patch_budget:
        raise ExampleTooLong(f"example {example.example_id}: {pv.shape[0]} patches exceed patch_budget={patch_budget}")
    pv = np.concatenate([pv, np.zeros((patch_budget - pv.shape[0], pv.shape[1]), np.float32)])
    out = (images, grid, pv)
    if cache is not None:
        cache[key] = out
    return out


def encode(example: Example, tokenizer, model_cfg, *, seq_len: int, patch_budget: int, min_pixels: int,
           max_pixels: int, reasoning: bool, prompt_only: bool = False, image_cache: dict | None = None) -> dict:
    """One example -> dict of arrays (+ host 'meta'). Training rows are right-padded; prompt rows left-padded."""
    images, grid, pv = _images(example, patch_budget, min_pixels, max_pixels, image_cache)
    resized = [(int(g[2]) * 14, int(g[1]) * 14) for g in grid]
    r = render(example, tokenizer, list(num_image_tokens(grid)), resized, reasoning=reasoning, with_answer=not prompt_only)
    ids, loss_mask = r["input_ids"], r["loss_mask"]
    if len(ids) > seq_len:
        raise ExampleTooLong(f"example {example.example_id}: {len(ids)} tokens exceed seq_len={seq_len}")
    pad = seq_len - len(ids)
    if prompt_only:
        ids = np.concatenate([np.full(pad, tokenizer.pad_id, np.int32), ids])
        mask = np.concatenate([np.zeros(pad, np.int32), np.ones(len(r["input_ids"]), np.int32)])
        loss_mask = np.zeros(seq_len, np.int32)
    else:
        ids = np.concatenate([ids, np.full(pad, tokenizer.pad_id, np.int32)])
        mask = np.concatenate([np.ones(len(r["input_ids"]), np.int32), np.zeros(pad, np.int32)])
        loss_mask = np.concatenate([loss_mask, np.zeros(pad, np.int32)])
    pos, delta = rope_index(ids[None], grid, mask[None], spatial_merge_size=model_cfg.vision.spatial_merge_size,
                            image_token_id=tokenizer.image_pad_id)
    vin = vision_inputs(grid, model_cfg.vision, pad_to=patch_budget)
    (w, h), (rw, rh) = example.image_sizes[example.box_image_index], resized[example.box_image_index]
    boxes = [(b.x_min * rw / w, b.y_min * rh / h, b.x_max * rw / w, b.y_max * rh / h) for b in example.boxes]
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask, "positions": pos[:, 0],
            "deltas": delta[0], "pixel_values": pv, "vision_inputs": vin,
            "meta": {"example_id": example.example_id, "task": example.task, "question_type": example.question_type,
                     "target": r["answer"] if not prompt_only else example.target, "prompt": example.prompt,
                     "boxes": boxes, "image_size": (rw, rh), "labels": example.labels, "image": images[-1],
                     "reference_trace": example.meta.get("reasoning", "")}}


def collate(rows: list[dict]) -> tuple[dict, dict]:
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("meta", "vision_inputs")}
    arrays["vision_inputs"] = {k: np.stack([r["vision_inputs"][k] for r in rows]) for k in rows[0]["vision_inputs"]}
    meta = {"example_ids": [r["meta"]["example_id"] for r in rows], "rows": [r["meta"] for r in rows]}
    return arrays, meta


class EncodedBatches:
    """Cycles over pre-encoded rows in a seeded order; state = position (exact resume)."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int = 0):
        if len(rows) < batch_size:
            raise ValueError(f"{len(rows)} examples cannot fill a batch of {batch_size}")
        self.rows, self.batch_size, self.seed, self.position = rows, batch_size, seed, 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self):
        return self

    def __next__(self):
        n = len(self.rows)
        idx = []
        for k in range(self.batch_size):
            p = self.position + k
            idx.append(self._order(p // n)[p % n])
        self.position += self.batch_size
        return collate([self.rows[i] for i in idx])

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])


class GrainBatches:
    """Batches of a real dataset from the grain pipeline (data_pipelines.pipeline): this process's shard,
    seeded shuffle reshuffled each epoch, images read and encoded per batch (optionally in worker processes),
    one static shape. Rows are per process (`per_process`): the step assembles the global batch."""

    per_process = True

    def __init__(self, source: "GrainSource", batch_size: int, seed: int):
        import jax
        from data_pipelines.pipeline import make_dataset
        if batch_size % jax.process_count():
            raise ValueError(f"batch size {batch_size} is not divisible by {jax.process_count()} processes")
        ds = make_dataset(source.examples, batch_size=batch_size // jax.process_count(),
                          buckets=[(source.seq_len, source.patch_budget)], encode_fn=source.encode_fn,
                          does_not_fit=(ExampleTooLong,), seed=seed, num_epochs=None,
                          shard_index=jax.process_index(), shard_count=jax.process_count(),
                          worker_count=source.workers, too_long="skip" if source.skip_too_long else "raise")
        self._it = iter(ds)

    def __iter__(self):
        return self

    def __next__(self):
        arrays, meta = next(self._it)
        return arrays, {"example_ids": meta["example_ids"], "rows": meta["rows"]}

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)


@dataclasses.dataclass(frozen=True)
class GrainSource:
    """What a stage reads from a real dataset: Examples (images as paths) and how to encode them."""

    examples: list
    encode_fn: Any              # encode_fn(example, seq_len=, patch_budget=) -> row
    seq_len: int
    patch_budget: int
    skip_too_long: bool = False
    workers: int = 0


def batches(source, batch_size: int, seed: int):
    """Encoded rows (synthetic, in memory) -> EncodedBatches; a GrainSource (real data) -> GrainBatches."""
    if isinstance(source, GrainSource):
        return GrainBatches(source, batch_size, seed)
    return EncodedBatches(source, batch_size, seed)
