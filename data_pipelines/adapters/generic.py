"""Benchmark dumps in the xraybench style: one record per item in JSONL, a JSON list, or parquet.

Column names are configurable (GenericColumns). The image cell holds a path, a list of paths (prior first
for difference items), or Hugging Face image dicts {"bytes": ..., "path": ...}; embedded bytes are decoded
in memory with load_image's decoder. Relative paths are resolved against `image_root` (default: the
dump's folder). Records without a split value are 'test' (a benchmark dump). Parquet is read lazily with
pyarrow, in record batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_pipelines.adapters import _common as c
from data_pipelines.image_io import decode_image_bytes
from data_pipelines.schema import TASKS, Box, Example

DEFAULT_TASK_ALIASES: Mapping[str, str] = {
    "report": "findings",
    "report_findings": "findings",
    "report_impression": "impression",
    "qa": "vqa",
    "open": "vqa",
    "closed": "vqa",
    "diff_vqa": "difference",
    "detection": "grounding",
}


@dataclasses.dataclass(frozen=True)
class GenericColumns:
    """Record keys; None means the dump has no such column."""

    images: str = "images"
    question: str = "question"
    answer: str = "answer"
    task: str | None = "task"
    split: str | None = "split"
    question_type: str | None = "question_type"
    example_id: str | None = "id"
    boxes: str | None = None  # list of [x_min, y_min, x_max, y_max] pixel boxes of the last image


def _records(path: Path) -> Iterator[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 optional

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                yield index, record
                index += 1
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path} line {line_no}: invalid JSON: {e}") from None
    elif suffix == ".json":
        with open(path, encoding="utf-8-sig") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        yield from enumerate(data)
    else:
        raise ValueError(f"{path}: unsupported dump format {suffix!r}; expected .jsonl, .json or .parquet")


def _image(cell: Any, image_root: Path, missing_images: str, where: str) -> tuple[Any, tuple[int, int]]:
    if isinstance(cell, Mapping):
        if cell.get("bytes"):
            array = decode_image_bytes(cell["bytes"], f"{where} ({cell.get('path') or 'embedded image'})")
            return array, (int(array.shape[1]), int(array.shape[0]))
        cell = cell.get("path")
    if not isinstance(cell, str) or not cell:
        raise ValueError(f"{where}: image entry must be a path or an image dict, got {cell!r}")
    path = Path(cell)
    return c.sized_image(path if path.is_absolute() else image_root / path, missing_images, source=where)


@c.checked_eagerly
def load_generic(
    path: c.PathLike,
    *,
    split: str | None = None,
    tasks: Sequence[str] | None = None,
    columns: GenericColumns = GenericColumns(),
    image_root: c.PathLike | None = None,
    dataset: str = "generic",
    default_task: str = "vqa",
    task_aliases: Mapping[str, str] = DEFAULT_TASK_ALIASES,
    missing_images: str = "error",
) -> Iterator[Example]:
    """One Example per record; `tasks` (default: all) filters by the mapped task name."""
    c.check_policy(missing_images)
    wanted = None if tasks is None else c.check_tasks(tasks, TASKS, "load_generic")
    want = c.normalize_split(split, "load_generic")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark dump not found: {path}")
    root = Path(image_root) if image_root is not None else path.parent
    required = [columns.images, columns.question, columns.answer]
    yield c.CHECKED
    for index, record in _records(path):
        where = f"{path} record {index}"
        c.require_field(path, record, required, f"record {index}")
        raw_task = str(record.get(columns.task, default_task) if columns.task else default_task).strip()
        task = task_aliases.get(raw_task.lower(), raw_task)
        if task not in TASKS:
            raise ValueError(f"{where}: task {raw_task!r} is not one of {TASKS}; pass task_aliases to map it")
        if wanted is not None and task not in wanted:
            continue
        split_name = c.normalize_split(record.get(columns.split) or "test", where) if columns.split else "test"
        if want is not None and split_name != want:
            continue
        cells = record[columns.images]
        cells = list(cells) if isinstance(cells, (list, tuple)) else [cells]
        try:
            images = [_image(cell, root, missing_images, where) for cell in cells]
        except c.SkipExample:
            continue
        boxes = ()
        if columns.boxes and record.get(columns.boxes):
            boxes = tuple(Box(*map(float, b)) for b in record[columns.boxes])
        answer = record[columns.answer]
        yield Example(
            example_id=str(record.get(columns.example_id, index) if columns.example_id else index),
            dataset=dataset,
            task=task,
            images=tuple(p for p, _ in images),
            image_sizes=tuple(s for _, s in images),
            prompt=c.clean_text(record[columns.question]),
            target="|".join(map(str, answer)) if isinstance(answer, (list, tuple)) else str(answer).strip(),
            boxes=boxes,
            question_type=(record.get(columns.question_type) if columns.question_type else None),
            split=split_name,
            meta={"source": where},
        )
