"""Chest X-ray VQA sets: MIMIC-CXR-VQA, Medical-Diff-VQA, VQA-RAD (CHEST only) and SLAKE (English X-Ray only).

MIMIC-CXR-VQA: root/{train,valid,test}.json (or root/dataset/...), items with question, answer (a list or a
  string; lists are '|'-joined), content_type, semantic_type, image_path (relative to the MIMIC-CXR-JPG root
  or its files/ folder).
Medical-Diff-VQA: root/mimic_pair_questions.csv (study_id, subject_id, ref_id, question_type, question, answer,
  split); each study's image is its first PA (else AP, else any) view from the MIMIC-CXR-JPG metadata under
  `mimic_root`. 'difference' questions get (prior = ref_id, current = study_id) images, prior first.
VQA-RAD: root/'VQA_RAD Dataset Public.json', images in root/'VQA_RAD Image Folder'/; phrase_type
  test_freeform / test_para marks the test split.
SLAKE: root/{train,validate,test}.json, images in root/imgs/<img_name>.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_pipelines.adapters import _common as c
from data_pipelines.adapters.mimic_cxr import find_mimic_table, order_views, read_metadata, study_dir
from data_pipelines.schema import Example

VQA_TASKS = ("vqa",)
DIFF_TASKS = ("vqa", "difference")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from None


def _answer_text(answer: Any) -> str:
    if isinstance(answer, (list, tuple)):
        return "|".join(c.clean_text(a) for a in answer)
    return c.clean_text(answer)


def _json_items(path: Path) -> list[dict]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of question items, got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------ MIMIC-CXR-VQA


@c.checked_eagerly
def load_mimic_cxr_vqa(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("vqa",),
    mimic_root: c.PathLike | None = None,
    missing_images: str = "error",
) -> Iterator[Example]:
    _, want = c.check_arguments("load_mimic_cxr_vqa", tasks, VQA_TASKS, missing_images, split)
    root = Path(root)
    folder = root / "dataset" if (root / "dataset").is_dir() else root
    image_root = Path(mimic_root) if mimic_root is not None else root
    if not any((folder / n).is_file() for n in ("train.json", "valid.json", "test.json")):
        raise FileNotFoundError(f"{folder}: no train.json / valid.json / test.json (MIMIC-CXR-VQA)")
    yield c.CHECKED
    for split_name, file_name in (("train", "train.json"), ("val", "valid.json"), ("test", "test.json")):
        path = folder / file_name
        if (want is not None and split_name != want) or not path.is_file():
            continue
        for i, item in enumerate(_json_items(path)):
            c.require_field(path, item, ("question", "answer", "image_path"), f"item {i}")
            rel = Path(item["image_path"])
            image = c.resolve_image(image_root / rel, [image_root / "files" / rel])
            try:
                image_path, size = c.sized_image(image, missing_images, source=str(path))
            except c.SkipExample:
                continue
            yield Example(
                example_id=f"mimic-cxr-vqa/{split_name}/{item.get('idx', i)}",
                dataset="mimic-cxr-vqa",
                task="vqa",
                images=(image_path,),
                image_sizes=(size,),
                prompt=c.clean_text(item["question"]),
                target=_answer_text(item["answer"]),
                question_type=item.get("content_type"),
                split=split_name,
                meta={
                    k: item[k] for k in ("semantic_type", "template", "image_id", "subject_id", "study_id") if k in item
                },
            )


# --------------------------------------------------------------------------------------- Medical-Diff-VQA


@c.checked_eagerly
def load_medical_diff_vqa(
    root: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] = ("vqa", "difference"),
    mimic_root: c.PathLike | None = None,
    missing_images: str = "error",
) -> Iterator[Example]:
    tasks, want = c.check_arguments("load_medical_diff_vqa", tasks, DIFF_TASKS, missing_images, split)
    root = Path(root)
    mimic = Path(mimic_root) if mimic_root is not None else root
    path = c.find_file(root, "mimic_pair_questions.csv")
    metadata_path = str(find_mimic_table(mimic, "metadata"))
    yield c.CHECKED
    studies = read_metadata(mimic)
    columns = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")

    def study_image(study_id: str, row_no: int) -> tuple[str, tuple[int, int]]:
        rows = studies.get(str(int(float(study_id))))
        if not rows:
            raise ValueError(f"{path} row {row_no}: study {study_id} is not in {metadata_path}")
        best = order_views(rows)[0]
        image = study_dir(mimic / "files", best["subject_id"], best["study_id"]) / f"{best['dicom_id']}.jpg"
        return c.sized_image(image, missing_images, c.as_int_size(best["Columns"], best["Rows"]), metadata_path)

    for row_no, row in enumerate(c.read_csv(path, columns), start=2):
        split_name = c.normalize_split(row["split"], str(path))
        if want is not None and split_name != want:
            continue
        kind = row["question_type"].strip()
        task = "difference" if kind == "difference" else "vqa"
        if task not in tasks:
            continue
        try:
            current = study_image(row["study_id"], row_no)
            images = [study_image(row["ref_id"], row_no), current] if task == "difference" else [current]
        except c.SkipExample:
            continue
        yield Example(
            example_id=f"medical-diff-vqa/{row_no - 2}",
            dataset="medical-diff-vqa",
            task=task,
            images=tuple(p for p, _ in images),
            image_sizes=tuple(s for _, s in images),
            prompt=c.clean_text(row["question"]),
            target=c.clean_text(row["answer"]),
            question_type=kind,
            split=split_name,
            meta={"study_id": row["study_id"], "subject_id": row["subject_id"], "ref_id": row["ref_id"]},
        )


# ------------------------------------------------------------------------------------------------ VQA-RAD


@c.checked_eagerly
def load_vqa_rad(
    root: c.PathLike, *, split: str | None = None, tasks: Sequence[str] = ("vqa",), missing_images: str = "error"
) -> Iterator[Example]:
    _, want = c.check_arguments("load_vqa_rad", tasks, VQA_TASKS, missing_images, split)
    root = Path(root)
    path = c.find_file(root, "VQA_RAD Dataset Public.json")
    yield c.CHECKED
    for i, item in enumerate(_json_items(path)):
        c.require_field(path, item, ("image_name", "image_organ", "question", "answer"), f"item {i}")
        if str(item["image_organ"]).strip().upper() != "CHEST":
            continue
        split_name = "test" if str(item.get("phrase_type", "")).startswith("test") else "train"
        if want is not None and split_name != want:
            continue
        try:
            image_path, size = c.sized_image(
                root / "VQA_RAD Image Folder" / item["image_name"], missing_images, source=str(path)
            )
        except c.SkipExample:
            continue
        yield Example(
            example_id=f"vqa-rad/{item.get('qid', i)}",
            dataset="vqa-rad",
            task="vqa",
            images=(image_path,),
            image_sizes=(size,),
            prompt=c.clean_text(item["question"]),
            target=_answer_text(item["answer"]),
            question_type=item.get("question_type"),
            split=split_name,
            meta={k: item[k] for k in ("qid", "answer_type", "phrase_type") if k in item},
        )


# -------------------------------------------------------------------------------------------------- SLAKE


@c.checked_eagerly
def load_slake(
    root: c.PathLike, *, split: str | None = None, tasks: Sequence[str] = ("vqa",), missing_images: str = "error"
) -> Iterator[Example]:
    _, want = c.check_arguments("load_slake", tasks, VQA_TASKS, missing_images, split)
    root = Path(root)
    files = [(s, root / n) for s, n in (("train", "train.json"), ("val", "validate.json"), ("test", "test.json"))]
    if not any(path.is_file() for _, path in files):
        raise FileNotFoundError(f"{root}: no train.json / validate.json / test.json (SLAKE)")
    yield c.CHECKED
    for split_name, path in files:
        if not path.is_file() or (want is not None and split_name != want):
            continue
        for i, item in enumerate(_json_items(path)):
            c.require_field(path, item, ("img_name", "question", "answer", "q_lang", "modality"), f"item {i}")
            if item["q_lang"] != "en" or item["modality"] != "X-Ray":
                continue
            try:
                image_path, size = c.sized_image(root / "imgs" / item["img_name"], missing_images, source=str(path))
            except c.SkipExample:
                continue
            yield Example(
                example_id=f"slake/{item.get('qid', f'{split_name}-{i}')}",
                dataset="slake",
                task="vqa",
                images=(image_path,),
                image_sizes=(size,),
                prompt=c.clean_text(item["question"]),
                target=_answer_text(item["answer"]),
                question_type=item.get("content_type"),
                split=split_name,
                meta={k: item[k] for k in ("qid", "img_id", "answer_type", "location", "base_type") if k in item},
            )
