"""CheXpert (train.csv / valid.csv) classification and CheXpert Plus report generation.

CheXpert: `root` is the CheXpert-v1.0[-small] folder (holding train.csv, valid.csv) or its parent. `Path`
cells look like `CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg` (relative to the parent).
CheXpert Plus: `root` holds df_chexpert_plus_240401.csv and the images; `path_to_image` is relative to root
(a `.png` twin or a `PNG/` prefix is also tried). Consecutive rows of one report become one example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from data_pipelines.adapters import _common as c
from data_pipelines.schema import CHEXPERT_LABELS, Example

SUPPORTED_TASKS = ("classification",)
PLUS_SUPPORTED_TASKS = ("findings", "impression")
PLUS_CSV = "df_chexpert_plus_240401.csv"
_SPLIT_FILES = {"train": "train.csv", "val": "valid.csv", "test": "test.csv"}
_COLUMNS = ("Path", "Frontal/Lateral", *CHEXPERT_LABELS)
_PLUS_COLUMNS = ("path_to_image", "split", "section_findings", "section_impression")


def _csv_dir(root: Path) -> Path:
    if any((root / n).is_file() or (root / (n + ".gz")).is_file() for n in _SPLIT_FILES.values()):
        return root
    for name in ("CheXpert-v1.0-small", "CheXpert-v1.0"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root}: no train.csv / valid.csv here or in CheXpert-v1.0[-small]/")


@c.checked_eagerly
def load_chexpert(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("classification",),
    missing_images: str = "error",
) -> Iterator[Example]:
    """One classification Example per image; labels are the 14 CheXpert columns read by name."""
    _, want = c.check_arguments("load_chexpert", tasks, SUPPORTED_TASKS, missing_images, split)
    csv_dir = _csv_dir(Path(root))
    splits = (
        [want]
        if want is not None
        else [s for s in _SPLIT_FILES if any((csv_dir / (_SPLIT_FILES[s] + z)).is_file() for z in ("", ".gz"))]
    )
    paths = {s: c.find_file(csv_dir, _SPLIT_FILES[s]) for s in splits}
    yield c.CHECKED
    for split_name, path in paths.items():
        for row in c.read_csv(path, _COLUMNS):
            rel = Path(row["Path"])
            image = c.resolve_image(csv_dir.parent / rel, [csv_dir / Path(*rel.parts[1:])] if rel.parts else [])
            try:
                image_path, size = c.sized_image(image, missing_images, source=str(path))
            except c.SkipExample:
                continue
            labels = c.chexpert_vector(row, f"{path}: row Path={row['Path']!r}")
            yield Example(
                example_id=f"chexpert/{row['Path']}",
                dataset="chexpert",
                task="classification",
                images=(image_path,),
                image_sizes=(size,),
                prompt=c.CLASSIFICATION_PROMPT,
                target=c.positive_findings(labels),
                labels=labels,
                split=split_name,
                meta={
                    "sex": row.get("Sex", ""),
                    "age": row.get("Age", ""),
                    "view": row["Frontal/Lateral"],
                    "ap_pa": row.get("AP/PA", ""),
                },
            )


def _plus_report_key(row: dict[str, str]) -> tuple[str, ...]:
    if "deid_patient_id" in row and "patient_report_date_order" in row:
        return (row["deid_patient_id"], row["patient_report_date_order"])
    return (row["path_to_image"],)


def _present(text: str) -> str:
    text = c.clean_text(text)
    return "" if text.lower() in ("", "nan", "none") else text


@c.checked_eagerly
def load_chexpert_plus(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("findings", "impression"),
    csv_name: str = PLUS_CSV,
    missing_images: str = "error",
) -> Iterator[Example]:
    """One Example per (report, task) from section_findings / section_impression; frontal images first."""
    tasks, want = c.check_arguments("load_chexpert_plus", tasks, PLUS_SUPPORTED_TASKS, missing_images, split)
    root = Path(root)
    path = c.find_file(root, csv_name)
    yield c.CHECKED

    def emit(group: list[dict[str, str]]) -> Iterator[Example]:
        group = sorted(group, key=lambda r: r.get("frontal_lateral", "").strip().lower() != "frontal")
        split_name = c.normalize_split(group[0]["split"], str(path))
        if want is not None and split_name != want:
            return
        try:
            images = []
            for r in group:
                rel = Path(r["path_to_image"])
                png = rel.with_suffix(".png")
                image = c.resolve_image(root / rel, [root / png, root / "PNG" / png])
                images.append(c.sized_image(image, missing_images, source=str(path)))
        except c.SkipExample:
            return
        key = "/".join(_plus_report_key(group[0]))
        for task, column, prompt in (
            ("findings", "section_findings", c.FINDINGS_PROMPT),
            ("impression", "section_impression", c.IMPRESSION_PROMPT),
        ):
            text = _present(group[0][column])
            if task in tasks and text:
                yield Example(
                    example_id=f"chexpert-plus/{key}/{task}",
                    dataset="chexpert-plus",
                    task=task,
                    images=tuple(p for p, _ in images),
                    image_sizes=tuple(s for _, s in images),
                    prompt=prompt,
                    target=text,
                    split=split_name,
                    meta={
                        "paths": tuple(r["path_to_image"] for r in group),
                        "views": tuple(r.get("frontal_lateral", "") for r in group),
                    },
                )

    group: list[dict[str, str]] = []
    for row in c.read_csv(path, _PLUS_COLUMNS):
        if group and _plus_report_key(row) != _plus_report_key(group[0]):
            yield from emit(group)
            group = []
        group.append(row)
    if group:
        yield from emit(group)
