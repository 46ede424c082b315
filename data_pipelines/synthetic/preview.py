"""Contact sheet of rendered studies with their finding boxes drawn (for looking at the generator)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines.synthetic.config import SyntheticConfig
from data_pipelines.synthetic.dataset import study as synthetic_study

_COLORS = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255), (255, 150, 60))


def contact_sheet(studies: Sequence, path: str, *, columns: int = 4, zoom: int = 2) -> np.ndarray:
    """Writes a PNG grid of studies (anything with .image and .findings) with boxes and short labels.

    Returns the RGB sheet array [rows * H * zoom, columns * W * zoom, 3]."""
    tiles = []
    for study in studies:
        img = np.asarray(study.image, np.float32)
        tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).convert("RGB")
        tile = tile.resize((img.shape[1] * zoom, img.shape[0] * zoom), Image.NEAREST)
        draw = ImageDraw.Draw(tile)
        for k, f in enumerate(study.findings):
            color = _COLORS[k % len(_COLORS)]
            x0, y0, x1, y1 = (v * zoom for v in f.bbox)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=color)
            label = f"{f.phrase} {f.side}{' ' + f.zone if f.zone else ''}".strip()
            draw.text((x0 + 2, max(y0 - 11, 0)), label, fill=color)
        draw.text(
            (4, tile.height - 12),
            f"{getattr(study, 'view', '')} CTR {getattr(study, 'ctr', 0):.2f}",
            fill=(255, 255, 0),
        )
        tiles.append(np.asarray(tile))
    if not tiles:
        raise ValueError("data_pipelines/synthetic/preview.py: contact_sheet needs at least one study")
    h, w, _ = tiles[0].shape
    rows = -(-len(tiles) // columns)
    sheet = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    Image.fromarray(sheet).save(path)
    return sheet


def main(argv=None) -> None:
    """python -m data_pipelines.synthetic.preview [PATH] [--size N] [--difficulty D]: 8 train studies."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", nargs="?", default="/tmp/synthetic_sheet.png")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--difficulty", type=float, default=0.3)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    config = SyntheticConfig(image_size=args.size, difficulty=args.difficulty)
    studies, index = [], args.start
    while len(studies) < 8:  # seven abnormal studies and one normal one
        s = synthetic_study("train", index, config)
        index += 1
        if bool(s.findings) != (len(studies) == 7):
            studies.append(s)
    contact_sheet(studies, args.path, zoom=max(1, 256 // args.size))
    for s in studies:
        print(s.study_id, s.view, f"CTR {s.ctr:.2f}", [f"{f.phrase}{f.where} {list(f.bbox)}" for f in s.findings])


if __name__ == "__main__":
    main()
