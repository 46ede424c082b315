"""MS-CXR phrase grounding (phrase -> boxes) and referring (boxes -> phrase).

`root` holds MS_CXR_Local_Alignment_v<version>.csv with columns dicom_id, subject_id, study_id, category_name,
label_text, path, x, y, w, h, image_width, image_height, split: one row per (phrase, box), box in x, y, w, h
original MIMIC-CXR-JPG pixels. Rows are grouped by (dicom_id, label_text). `path` is relative to the
MIMIC-CXR-JPG root (`mimic_root`, default `root`).
Bad boxes: a negative w or h raises ValueError naming the file, dicom_id and phrase; boxes reaching outside
(image_width, image_height) are kept as given and their indices listed in meta['boxes_outside_image'].
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.boxes import format_boxes_text, xywh_to_xyxy
from data_pipelines.schema import Box, Example

DATASET = "ms-cxr"
SUPPORTED_TASKS = ("grounding", "referring")
_COLUMNS = (
    "dicom_id",
    "category_name",
    "label_text",
    "path",
    "x",
    "y",
    "w",
    "h",
    "image_width",
    "image_height",
    "split",
)


def find_ms_cxr_csv(root: Path) -> Path:
    pattern = re.compile(r"MS_CXR_Local_Alignment_v(\d+)\.(\d+)\.(\d+)\.csv(\.gz)?$")
    found = [
        (tuple(int(g) for g in m.groups()[:3]), p)
        for p in root.glob("MS_CXR_Local_Alignment_v*.csv*")
        if (m := pattern.match(p.name))
    ]
    if not found:
        raise FileNotFoundError(f"{root}: no MS_CXR_Local_Alignment_v<version>.csv found")
    return max(found)[1]


@c.checked_eagerly
def load_ms_cxr(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("grounding",),
    mimic_root: c.PathLike | None = None,
    missing_images: str = "error",
) -> Iterator[Example]:
    """One Example per (dicom_id, label_text) and task; boxes converted from xywh to pixel xyxy."""
    tasks, want = c.check_arguments("load_ms_cxr", tasks, SUPPORTED_TASKS, missing_images, split)
    root = Path(root)
    image_root = Path(mimic_root) if mimic_root is not None else root
    path = find_ms_cxr_csv(root)
    yield c.CHECKED
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in c.read_csv(path, _COLUMNS):
        groups.setdefault((row["dicom_id"], row["label_text"]), []).append(row)

    for index, ((dicom_id, phrase), rows) in enumerate(groups.items()):
        first = rows[0]
        split_name = c.normalize_split(first["split"], str(path))
        if want is not None and split_name != want:
            continue
        size = c.as_int_size(first["image_width"], first["image_height"])
        if size is None:
            raise ValueError(
                f"{path}: dicom_id {dicom_id}: bad image_width/image_height "
                f"{first['image_width']!r}/{first['image_height']!r}"
            )
        rel = Path(first["path"])
        image = c.resolve_image(image_root / rel, [image_root / "files" / rel])
        try:
            image_path, size = c.sized_image(image, missing_images, size, str(path))
        except c.SkipExample:
            continue
        try:
            xywh = [[float(r[k]) for k in ("x", "y", "w", "h")] for r in rows]
        except ValueError as e:
            raise ValueError(f"{path}: dicom_id {dicom_id}: non-numeric box: {e}") from None
        c.check_xywh(path, f"dicom_id {dicom_id} phrase {phrase!r}", xywh)
        xyxy = xywh_to_xyxy(xywh)
        boxes = tuple(Box(*map(float, b), label=r["category_name"]) for b, r in zip(xyxy, rows))
        box_text = format_boxes_text(xyxy)
        base = dict(
            dataset=DATASET,
            images=(image_path,),
            image_sizes=(size,),
            boxes=boxes,
            split=split_name,
            meta={
                "dicom_id": dicom_id,
                "category": first["category_name"],
                "boxes_outside_image": c.boxes_outside_image(xyxy, size),
                "subject_id": first.get("subject_id", ""),
                "study_id": first.get("study_id", ""),
            },
        )
        if "grounding" in tasks:
            yield Example(
                example_id=f"{DATASET}/{dicom_id}/{index}/grounding",
                task="grounding",
                prompt=c.GROUNDING_PROMPT.format(phrase=phrase),
                target=box_text,
                **base,
            )
        if "referring" in tasks:
            yield Example(
                example_id=f"{DATASET}/{dicom_id}/{index}/referring",
                task="referring",
                prompt=c.REFERRING_PROMPT.format(box=box_text),
                target=phrase,
                **base,
            )
