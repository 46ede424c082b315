"""Rows for the alignment stage (dmx_jax.training.align): one per study, the current image's pixels and vision
metadata padded to a patch budget, the merged units' coordinates and the targets of the generator's truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.pipeline.encode import image_array
from data_pipelines.synthetic.align import align_targets, study_key
from dmx_jax.model.vision import vision_inputs
from dmx_jax.processing.image import preprocess_images


def align_rows(
    examples: Sequence,
    vision_cfg,
    *,
    patch_budget: int,
    min_pixels: int,
    max_pixels: int,
    dedupe: bool = True,
    prompt_row=None,
) -> list[dict]:
    """One row per study (current image) of synthetic Examples: pixel_values [patch_budget, F] (zero-padded),
    vision_inputs, unit_xy [U, 2] in [-1, 1] and unit_mask [U] of the merged units (U = patch_budget / m^2),
    and the targets of data_pipelines.synthetic.align.align_targets. prompt_row(example) -> an encoded,
    left-padded prompt row of the study's image (decoder read-out): its input_ids, attention_mask and
    positions join the row."""
    m = vision_cfg.spatial_merge_size
    seen, rows = set(), []
    for ex in examples:
        key = study_key(ex)
        if dedupe and key[0] is not None and key in seen:
            continue
        seen.add(key)
        img = image_array(ex.images[-1], ex.example_id)
        proc = preprocess_images(
            [img],
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            patch_size=vision_cfg.patch_size,
            temporal_patch_size=vision_cfg.temporal_patch_size,
            merge_size=m,
        )
        grid, pv = proc["image_grid_thw"], proc["pixel_values"]
        if pv.shape[0] > patch_budget:
            raise ValueError(f"example {ex.example_id}: {pv.shape[0]} patches exceed patch_budget {patch_budget}")
        t, gh, gw = (int(v) for v in grid[0])
        lh, lw = gh // m, gw // m
        yy, xx = np.meshgrid(np.arange(lh), np.arange(lw), indexing="ij")
        xy = np.stack([(xx.ravel() + 0.5) / lw * 2 - 1, (yy.ravel() + 0.5) / lh * 2 - 1], -1)  # [t*lh*lw/t, 2]
        xy = np.tile(xy, (t, 1)).astype(np.float32)
        units = patch_budget // (m * m)
        rows.append(
            {
                "pixel_values": np.concatenate([pv, np.zeros((patch_budget - pv.shape[0], pv.shape[1]), np.float32)]),
                "vision_inputs": vision_inputs(grid, vision_cfg, pad_to=patch_budget),
                "unit_xy": np.concatenate([xy, np.zeros((units - len(xy), 2), np.float32)]),
                "unit_mask": (np.arange(units) < len(xy)).astype(np.float32),
                "row_mask": np.float32(1.0),
                **align_targets(ex),
            }
        )
        if prompt_row is not None:
            pr = prompt_row(ex)
            if not np.array_equal(pr["pixel_values"], rows[-1]["pixel_values"]):
                raise ValueError(f"example {ex.example_id}: the prompt row's pixels differ from the study's")
            rows[-1].update({k: pr[k] for k in ("input_ids", "attention_mask", "positions")})
    return rows
