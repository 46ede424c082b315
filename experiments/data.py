"""Static-shape batches from Examples for the experiment driver (synthetic default).

Each example becomes fixed-length arrays (seq_len tokens, patch_budget patches, batch-major leaves), so
every jitted step compiles once. An example that does not fit raises before training, naming its id.
The iterator is deterministic in (seed, position) and exposes get_state/set_state for exact resume.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.formatting import render
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
    images = [np.asarray(im, np.float32) for im in example.images]
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


class LazyBatches(EncodedBatches):
    """EncodedBatches over Examples encoded when drawn (real datasets: images are read per batch).

    Examples that do not fit (ExampleTooLong) are skipped and counted when skip_too_long, else raise.
    State = number of examples consumed (exact resume: the seeded order is recomputed).
    """

    def __init__(self, examples: list, encode_fn, batch_size: int, seed: int = 0, skip_too_long: bool = False):
        super().__init__(examples, batch_size, seed)
        self.encode_fn, self.skip_too_long, self.skipped = encode_fn, skip_too_long, 0

    def __next__(self):
        n, rows = len(self.rows), []
        while len(rows) < self.batch_size:
            p = self.position
            example = self.rows[self._order(p // n)[p % n]]
            self.position += 1
            try:
                rows.append(self.encode_fn(example))
            except ExampleTooLong:
                if not self.skip_too_long:
                    raise
                self.skipped += 1
        return collate(rows)


def batches(source, batch_size: int, seed: int):
    """A list of encoded rows -> EncodedBatches; a (examples, encode_fn, skip) triple -> LazyBatches."""
    if isinstance(source, tuple):
        examples, encode_fn, skip = source
        return LazyBatches(examples, encode_fn, batch_size, seed, skip_too_long=skip)
    return EncodedBatches(source, batch_size, seed)
