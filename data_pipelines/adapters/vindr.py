"""VinDr-CXR: abnormality grounding (multi-reader boxes) and image-level classification.

Two layouts under `root`:
  PhysioNet vindr-cxr 1.0.0: annotations/annotations_{train,test}.csv (image_id, rad_id, class_name, x_min,
    y_min, x_max, y_max), optional annotations/image_labels_{train,test}.csv (image_id, rad_id + 28 label
    columns), images {train,test}/<image_id>.dicom.
  Kaggle VinBigData: train.csv (image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max),
    images train/<image_id>.dicom.
Boxes are x_min..y_max in original DICOM pixels (canonical). Every reader's box is kept: Box.label is the
class name and meta['box_rad_ids'] gives the reader of each box. "No finding" rows carry no box.
Classification target: classes found by any reader ('|'-joined, source vocabulary order), or "No finding".
Bad boxes: x_max < x_min or y_max < y_min (or a partly empty box) raises ValueError naming the file, image and
reader; boxes reaching outside the image are kept as given and listed in meta['boxes_outside_image'].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.boxes import format_boxes_text, vindr_to_xyxy
from data_pipelines.schema import Box, Example

DATASET = "vindr-cxr"
SUPPORTED_TASKS = ("grounding", "classification")
NO_FINDING = "No finding"
KAGGLE_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
_BOX_COLUMNS = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")


class _Image:
    """Everything the readers said about one image, in file order."""

    def __init__(self):
        self.readers: dict[str, list[str]] = {}  # rad_id -> class names
        self.boxes: list[tuple[str, str, tuple[float, float, float, float]]] = []  # (class, rad_id, xyxy)


def _read_boxes(path: Path, images: dict[str, _Image]) -> None:
    for row in c.read_csv(path, _BOX_COLUMNS):
        entry = images.setdefault(row["image_id"], _Image())
        name = row["class_name"].strip()
        entry.readers.setdefault(row["rad_id"], [])
        if name != NO_FINDING and name not in entry.readers[row["rad_id"]]:
            entry.readers[row["rad_id"]].append(name)
        coords = [row[k].strip() for k in ("x_min", "y_min", "x_max", "y_max")]
        if all(coords):
            try:
                xyxy = tuple(float(v) for v in vindr_to_xyxy([float(v) for v in coords]))
            except ValueError as e:
                raise ValueError(
                    f"{path}: image {row['image_id']} reader {row['rad_id']}: bad box {coords}: {e}"
                ) from None
            entry.boxes.append((name, row["rad_id"], xyxy))  # type: ignore[arg-type]
        elif any(coords):
            raise ValueError(f"{path}: image {row['image_id']} has a partial box {coords}")


def _read_image_labels(path: Path, images: dict[str, _Image]) -> list[str]:
    """Fills reader class lists from the 0/1 label table; returns the label vocabulary (file column order)."""
    rows = c.read_csv(path, ("image_id", "rad_id"))
    vocab: list[str] | None = None
    for row in rows:
        if vocab is None:
            vocab = [k for k in row if k not in ("image_id", "rad_id")]
        entry = images.setdefault(row["image_id"], _Image())
        found = entry.readers.setdefault(row["rad_id"], [])
        for name in vocab:
            if row[name].strip() not in ("", "0", "0.0") and name not in found and name != NO_FINDING:
                found.append(name)
    return vocab or []


def _layout(root: Path, split: str | None) -> list[tuple[str, Path, Path | None, Path]]:
    """[(split, box table, image-label table or None, image folder)]."""
    ann = root / "annotations"
    if (ann / "annotations_train.csv").is_file() or (ann / "annotations_test.csv").is_file():
        out = []
        for s in ("train", "test"):
            if split in (None, s) and (ann / f"annotations_{s}.csv").is_file():
                labels = ann / f"image_labels_{s}.csv"
                out.append((s, ann / f"annotations_{s}.csv", labels if labels.is_file() else None, root / s))
        if not out:
            raise FileNotFoundError(f"{ann}: no annotations_{split}.csv")
        return out
    if split not in (None, "train"):
        raise ValueError(f"{root}: the Kaggle VinBigData layout has labels for the train split only, got {split!r}")
    return [("train", c.find_file(root, "train.csv"), None, root / "train")]


@c.checked_eagerly
def load_vindr(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("grounding", "classification"),
    missing_images: str = "error",
) -> Iterator[Example]:
    """Grounding: one Example per (image, class with boxes). Classification: one Example per image."""
    tasks = c.check_tasks(tasks, SUPPORTED_TASKS, "load_vindr")
    c.check_policy(missing_images)
    layout = _layout(Path(root), c.normalize_split(split, "load_vindr"))
    yield c.CHECKED
    for split_name, box_path, label_path, image_dir in layout:
        images: dict[str, _Image] = {}
        _read_boxes(box_path, images)
        vocab = list(KAGGLE_CLASSES)
        if label_path is not None:
            vocab = _read_image_labels(label_path, images)
        rank = {name: i for i, name in enumerate(vocab)}
        for image_id, entry in images.items():
            dicom = image_dir / f"{image_id}.dicom"
            alternatives = [dicom.with_suffix(s) for s in (".dcm", ".png", ".jpg")]
            try:
                image_path, size = c.sized_image(
                    c.resolve_image(dicom, alternatives), missing_images, source=str(box_path)
                )
            except c.SkipExample:
                continue
            base = dict(dataset=DATASET, images=(image_path,), image_sizes=(size,), split=split_name)
            if "classification" in tasks:
                union = sorted(
                    {n for names in entry.readers.values() for n in names}, key=lambda n: (rank.get(n, len(rank)), n)
                )
                yield Example(
                    example_id=f"{DATASET}/{image_id}/classification",
                    task="classification",
                    prompt=c.CLASSIFICATION_PROMPT,
                    target="|".join(union) if union else NO_FINDING,
                    meta={"image_id": image_id, "reader_findings": {r: tuple(v) for r, v in entry.readers.items()}},
                    **base,
                )
            if "grounding" in tasks:
                by_class: dict[str, list[tuple[str, tuple[float, float, float, float]]]] = {}
                for name, rad_id, xyxy in entry.boxes:
                    by_class.setdefault(name, []).append((rad_id, xyxy))
                for name, items in by_class.items():
                    boxes = tuple(Box(*xyxy, label=name) for _, xyxy in items)
                    yield Example(
                        example_id=f"{DATASET}/{image_id}/grounding/{name}",
                        task="grounding",
                        prompt=c.GROUNDING_PROMPT.format(phrase=name),
                        target=format_boxes_text([b.as_tuple() for b in boxes]),
                        boxes=boxes,
                        meta={
                            "image_id": image_id,
                            "box_rad_ids": tuple(r for r, _ in items),
                            "boxes_outside_image": c.boxes_outside_image([x for _, x in items], size),
                        },
                        **base,
                    )
