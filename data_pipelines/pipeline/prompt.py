"""Generation prompts for one study, fitted exactly: the row encoder's prompt row stacked as a batch of one.

It needs both encode.py (the row) and batching.py (the stacking), so it sits above them: they never import each
other's callers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.pipeline.batching import stack_rows
from data_pipelines.pipeline.encode import EncodingConfig, encode_example, measure
from data_pipelines.schema import Example


def prompt_batch(images, prompt: str, tokenizer, cfg: EncodingConfig, *, task: str = "vqa") -> tuple[dict, dict]:
    """A generation prompt for one study, fitted exactly: (arrays with a batch of 1, its host meta row).

    images: [H, W] float arrays in [0, 1] (data_pipelines.load_image reads DICOM / PNG / JPEG). The arrays are
    what `dmx_jax.generate(model, **arrays, ...)` takes (input_ids, attention_mask, positions [1, 3, T] batch-major
    like every leaf, deltas, pixel_values, vision_inputs); meta['image_size'] is the model-input size that answer
    boxes refer to.
    """
    images = [np.asarray(im, np.float32) for im in images]
    sizes = tuple((im.shape[1], im.shape[0]) for im in images)
    example = Example("prompt/0", "prompt", task, tuple(images), sizes, prompt, "")
    cfg = dataclasses.replace(cfg, prompt_only=True)
    cache: dict = {}
    seq_len, patch_budget = measure(example, tokenizer, cfg, cache)
    row = encode_example(example, tokenizer, cfg, seq_len=seq_len, patch_budget=patch_budget, image_cache=cache)
    arrays, meta = stack_rows([row])
    arrays.pop("loss_mask")
    return arrays, meta["rows"][0]
