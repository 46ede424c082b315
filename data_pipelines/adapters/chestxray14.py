"""NIH ChestX-ray14: image-level classification (Data_Entry_2017) and box grounding (BBox_List_2017).

Header quirks handled by name: Data_Entry's `OriginalImage[Width,Height]` and
`OriginalImagePixelSpacing[x,y]` are split by the commas into several cells, and BBox_List's
`Bbox [x,y,w,h],,,` spans four cells plus three empty ones. Bracket groups are re-expanded into one name
per value: `OriginalImage[Width]`, `OriginalImage[Height]`, `Bbox [x]`, ... Boxes are x, y, w, h in the
1024^2 PNG; the BBox label `Infiltrate` is renamed `Infiltration` (the Data_Entry spelling).
Images: images/<Image Index> or images_NNN/images/<Image Index>. Splits from train_val_list.txt
(-> 'train') and test_list.txt (-> 'test'); without these lists every image is 'train'.
Bad boxes: a negative w or h raises ValueError naming the file and image; boxes reaching outside the image
are kept as given and their indices listed in meta['boxes_outside_image'].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.boxes import format_boxes_text, xywh_to_xyxy
from data_pipelines.schema import Box, Example

DATASET = "chestxray14"
SUPPORTED_TASKS = ("classification", "grounding")
PNG_SIZE = (1024, 1024)  # every released PNG; used only when an image is missing under missing_images='allow'
LABEL_SPELLING = {"Infiltrate": "Infiltration"}
_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x]", "Bbox [y]", "Bbox [w]", "Bbox [h]")


def expand_bracket_header(cells: list[str]) -> list[str]:
    """['OriginalImage[Width', 'Height]'] -> ['OriginalImage[Width]', 'OriginalImage[Height]'] (also for a
    quoted single cell 'OriginalImage[Width,Height]'); other cells pass through."""
    out: list[str] = []
    i = 0
    while i < len(cells):
        if "[" not in cells[i]:
            out.append(cells[i])
            i += 1
            continue
        j = i
        while "]" not in cells[j] and j + 1 < len(cells):
            j += 1
        base, inner = ",".join(cells[i : j + 1]).split("[", 1)
        out.extend(f"{base}[{name.strip()}]" for name in inner.rstrip("]").split(","))
        i = j + 1
    return out


def _split_lists(root: Path) -> dict[str, str]:
    split_of = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        path = root / name
        if path.is_file():
            for line in path.read_text().split():
                split_of[line.strip()] = split
    return split_of


class _ImageFinder:
    def __init__(self, root: Path):
        self.dirs = [root / "images", *sorted(p for p in root.glob("images_*/images") if p.is_dir())]

    def __call__(self, name: str) -> Path:
        return c.resolve_image(self.dirs[0] / name, [d / name for d in self.dirs[1:]])


def _age(text: str) -> int | None:
    text = text.strip().upper().rstrip("Y")
    return int(text) if text.isdigit() else None


@c.checked_eagerly
def load_chestxray14(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("classification", "grounding"),
    missing_images: str = "error",
) -> Iterator[Example]:
    """Classification: one Example per Data_Entry row. Grounding: one per (image, BBox label)."""
    tasks, want = c.check_arguments("load_chestxray14", tasks, SUPPORTED_TASKS, missing_images, split)
    if want == "val":
        raise ValueError("load_chestxray14: ChestX-ray14 has no official val split (train_val_list / test_list)")
    root = Path(root)
    split_of = _split_lists(root)
    if want is not None and not split_of:
        raise FileNotFoundError(f"{root}: split {want!r} needs train_val_list.txt / test_list.txt")
    find = _ImageFinder(root)
    entry_path = (
        c.find_file(root, "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv") if "classification" in tasks else None
    )
    box_path = c.find_file(root, "BBox_List_2017.csv") if "grounding" in tasks else None
    yield c.CHECKED

    def image_in_split(name: str, source: Path):
        """(split, image path, size) of an image in the wanted split; None for another split or a skipped image."""
        split_name = split_of.get(name, "train")
        if want is not None and split_name != want:
            return None
        image = find(name)
        try:
            return split_name, *c.sized_image(image, missing_images, None if image.is_file() else PNG_SIZE, str(source))
        except c.SkipExample:
            return None

    if entry_path is not None:
        path = entry_path
        for row in c.read_csv(path, _ENTRY_COLUMNS, header_fix=expand_bracket_header):
            name = row["Image Index"]
            found = image_in_split(name, path)
            if found is None:
                continue
            split_name, image_path, size = found
            findings = tuple(f.strip() for f in row["Finding Labels"].split("|") if f.strip())
            original = c.as_int_size(row.get("OriginalImage[Width]", ""), row.get("OriginalImage[Height]", ""))
            yield Example(
                example_id=f"{DATASET}/{name}/classification",
                dataset=DATASET,
                task="classification",
                images=(image_path,),
                image_sizes=(size,),
                prompt=c.CLASSIFICATION_PROMPT,
                target="|".join(findings),
                split=split_name,
                meta={
                    "findings": findings,
                    "patient_id": row["Patient ID"],
                    "age": _age(row.get("Patient Age", "")),
                    "sex": row.get("Patient Gender", ""),
                    "view": row["View Position"],
                    "original_size": original,
                    "follow_up": row.get("Follow-up #", ""),
                },
            )

    if box_path is not None:
        path = box_path
        groups: dict[tuple[str, str], list[dict[str, str]]] = {}
        for row in c.read_csv(path, _BOX_COLUMNS, header_fix=expand_bracket_header):
            groups.setdefault((row["Image Index"], row["Finding Label"].strip()), []).append(row)
        for (name, source_label), rows in groups.items():
            found = image_in_split(name, path)
            if found is None:
                continue
            split_name, image_path, size = found
            label = LABEL_SPELLING.get(source_label, source_label)
            try:
                xywh = [[float(r[f"Bbox [{k}]"]) for k in "xywh"] for r in rows]
            except ValueError as e:
                raise ValueError(f"{path}: image {name}: non-numeric box: {e}") from None
            c.check_xywh(path, f"image {name} label {source_label!r}", xywh)
            xyxy = xywh_to_xyxy(xywh)
            boxes = tuple(Box(*map(float, b), label=label) for b in xyxy)
            yield Example(
                example_id=f"{DATASET}/{name}/grounding/{label}",
                dataset=DATASET,
                task="grounding",
                images=(image_path,),
                image_sizes=(size,),
                prompt=c.GROUNDING_PROMPT.format(phrase=label),
                target=format_boxes_text(xyxy),
                boxes=boxes,
                split=split_name,
                meta={"source_label": source_label, "boxes_outside_image": c.boxes_outside_image(xyxy, size)},
            )
