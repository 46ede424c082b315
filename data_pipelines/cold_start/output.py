"""Accepted cold-start samples as JSONL records that data_pipelines.adapters.load_generic reads back.

Fields: id, dataset, task, split, question_type, images (absolute paths; boxes refer to the last image),
question, answer (the reasoning trace), boxes (stored-pixel xyxy of the last image), plus ground_truth,
teacher and reasoning_resized, which load_generic ignores. Read them back with
load_generic(path, columns=read_jsonl_columns()).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from data_pipelines.adapters.generic import GenericColumns
from data_pipelines.schema import Example


def read_jsonl_columns() -> GenericColumns:
    return GenericColumns(boxes="boxes")


def _record(example: Example) -> dict:
    where = f"example {example.example_id!r}"
    if example.box_image_index not in (-1, len(example.images) - 1):
        raise ValueError(f"{where}: boxes must refer to the last image to be written as a generic record")
    images = []
    for image in example.images:
        if not isinstance(image, (str, os.PathLike)):
            raise ValueError(f"{where}: in-memory image arrays cannot be written to JSONL; save them as files")
        images.append(str(Path(image).resolve()))
    return {
        "id": example.example_id,
        "dataset": example.dataset,
        "task": example.task,
        "split": example.split,
        "question_type": example.question_type,
        "images": images,
        "question": example.prompt,
        "answer": example.target,
        "boxes": [list(b.as_tuple()) for b in example.boxes],
        "ground_truth": example.meta.get("answer"),
        "teacher": example.meta.get("teacher"),
        "reasoning_resized": example.meta.get("reasoning_resized"),
    }


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> int:
    """Writes one record per example (atomically); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_record(ex), ensure_ascii=False) for ex in examples]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines)
