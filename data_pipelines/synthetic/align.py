"""Image-only targets of a synthetic study for the alignment stage (dmx_jax.training.align).

Per study (the current image of an Example): the 14 CheXpert labels (1 present, 0 otherwise; "No Finding"
as its own column), per finding whether it lies in the image's left / right half, and per finding the union
box of its lesions in [0, 1] image coordinates (x to the right, y down) with a mask of the findings present.
All come from the generator's truth (`Example.meta["findings"]`), never from the text.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.schema import CHEXPERT_LABELS, Example

N_LABELS = len(CHEXPERT_LABELS)


def align_targets(example: Example) -> dict[str, np.ndarray]:
    """{"labels" [14], "sides" [14, 2] (image-left half, image-right half), "boxes" [14, 4] xyxy in [0, 1],
    "box_mask" [14]} float32 of the example's current image."""
    findings = example.meta.get("findings")
    if findings is None:
        raise ValueError(
            f"example {example.example_id}: no meta['findings'] (alignment targets need the "
            f"synthetic generator's truth)"
        )
    w, h = example.image_sizes[-1]
    labels = np.zeros(N_LABELS, np.float32)
    sides = np.zeros((N_LABELS, 2), np.float32)
    boxes = np.zeros((N_LABELS, 4), np.float32)
    box_mask = np.zeros(N_LABELS, np.float32)
    for f in findings:
        k = CHEXPERT_LABELS.index(f["name"])
        x0, y0, x1, y1 = (float(v) for v in f["bbox"])
        b = np.array([x0 / w, y0 / h, x1 / w, y1 / h], np.float32).clip(0.0, 1.0)
        boxes[k] = (
            b if not box_mask[k] else np.concatenate([np.minimum(boxes[k][:2], b[:2]), np.maximum(boxes[k][2:], b[2:])])
        )
        box_mask[k] = labels[k] = 1.0
        sides[k, 0] = max(sides[k, 0], float(b[0] < 0.5))  # reaches into the image-left half
        sides[k, 1] = max(sides[k, 1], float(b[2] > 0.5))  # reaches into the image-right half
    if not labels[1 : CHEXPERT_LABELS.index("Support Devices")].any():
        labels[0] = 1.0  # No Finding (support devices alone allowed)
    return {"labels": labels, "sides": sides, "boxes": boxes, "box_mask": box_mask}


def study_key(example: Example) -> tuple:
    """Examples with one key show the same current image (several tasks of one study)."""
    return (example.meta.get("study_index"), example.meta.get("variant"), len(example.images))
