"""M-RoPE position ids (numpy), equivalent to transformers' Qwen2.5-VL get_rope_index for images."""

from __future__ import annotations

import numpy as np


def rope_index(
    input_ids, image_grid_thw=None, attention_mask=None, *, spatial_merge_size=2, image_token_id=151655
) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    grids = np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    pos = np.zeros((3, b, t), np.int64)  # transformers 5 leaves padded positions at 0
    deltas = np.zeros((b, 1), np.int64)
    img = 0
    for r in range(b):
        valid = np.nonzero(mask[r] == 1)[0]
        row = ids[r, valid]
        out = np.zeros((3, len(row)), np.int64)
        i, start = 0, 0
        while i < len(row):
            if row[i] == image_token_id:
                if img >= len(grids):
                    raise ValueError(f"row {r}: more image-token runs than image_grid_thw rows ({len(grids)})")
                gt, gh, gw = (int(x) for x in grids[img])
                lh, lw = gh // spatial_merge_size, gw // spatial_merge_size
                n = gt * lh * lw
                if i + n > len(row) or not np.all(row[i : i + n] == image_token_id):
                    raise ValueError(f"row {r}: image {img} needs {n} consecutive image tokens at position {i}")
                tt = np.zeros(n, np.int64)
                hh = np.tile(np.repeat(np.arange(lh), lw), gt)
                ww = np.tile(np.arange(lw), gt * lh)
                out[:, i : i + n] = np.stack([tt, hh, ww]) + start
                start = int(out[:, i : i + n].max()) + 1
                i += n
                img += 1
            else:
                j = i
                while j < len(row) and row[j] != image_token_id:
                    j += 1
                out[:, i:j] = np.arange(j - i) + start
                start += j - i
                i = j
        pos[:, r, valid] = out
        # as the reference: max position + 1 - number of valid tokens; a decode step at cache slot s
        # then uses position s + delta for all three axes
        deltas[r, 0] = (out.max() + 1 if out.size else 0) - len(row)
    if img != len(grids):
        raise ValueError(f"{len(grids)} images in image_grid_thw but {img} image-token runs in input_ids")
    return pos.astype(np.int32), deltas.astype(np.int32)
