"""Shared plumbing for the dataset adapters: file lookup, CSV by column name, splits, images, prompts."""

from __future__ import annotations

import csv
import functools
import gzip
import io
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines.image_io import ImageReadError, image_size
from data_pipelines.schema import CHEXPERT_LABELS, TASKS

PathLike = str | os.PathLike
log = logging.getLogger("data_pipelines.adapters")

# Default instructions per task (plain questions; chat templates and reasoning suffixes are added later).
FINDINGS_PROMPT = "Generate the FINDINGS section of the radiology report for this chest X-ray."
IMPRESSION_PROMPT = "Generate the IMPRESSION section of the radiology report for this chest X-ray."
CLASSIFICATION_PROMPT = "Which findings are present in this chest X-ray? List them separated by '|'."
GROUNDING_PROMPT = "Locate the following finding in the chest X-ray and give its bounding box: {phrase}"
REFERRING_PROMPT = "What finding is shown in the region {box} of this chest X-ray?"

MISSING_IMAGE_POLICIES = ("error", "skip", "allow")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


class MissingColumnError(ValueError):
    """A required column is absent from a table; the message names the file and the column(s)."""


class SkipExample(Exception):
    """Raised inside adapters when an example's image is missing and the policy is 'skip'."""


# ------------------------------------------------------------------------------------- eager argument checks

CHECKED = object()  # yielded once by an adapter generator when its arguments and files are validated


def checked_eagerly(generator_fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Runs an adapter generator up to its `yield CHECKED`, so bad arguments and missing files raise at call
    time rather than on first iteration; the returned iterator yields only Examples."""

    @functools.wraps(generator_fn)
    def wrapper(*args, **kwargs):
        gen = generator_fn(*args, **kwargs)
        if next(gen) is not CHECKED:
            raise RuntimeError(f"{generator_fn.__name__} must yield CHECKED before its first example")
        return gen

    return wrapper


# ------------------------------------------------------------------------------------------------- files


def find_file(root: PathLike, *names: str) -> Path:
    """The first of root/name or root/name.gz that exists; FileNotFoundError naming all candidates."""
    root = Path(root)
    tried = []
    for name in names:
        for cand in (root / name, root / (name + ".gz")):
            tried.append(str(cand))
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"none of these files exist: {', '.join(tried)}")


def open_text(path: PathLike) -> io.TextIOBase:
    """Text handle for a plain or .gz file (utf-8, BOM stripped, universal newlines for csv)."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_csv(
    path: PathLike, required: Sequence[str] = (), header_fix: Callable[[list[str]], list[str]] | None = None
) -> Iterator[dict[str, str]]:
    """Rows of a CSV as dicts keyed by header name; checks `required` columns first.

    header_fix rewrites the raw header cells (for files whose header does not match their rows).
    Rows longer than the header keep their extra cells under '' ignored; shorter rows get ''.
    """
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise MissingColumnError(f"{path}: empty file, expected columns {list(required)}") from None
        header = [h.strip() for h in header]
        if header_fix is not None:
            header = header_fix(header)
        check_columns(path, header, required)
        n = len(header)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < n:
                row = row + [""] * (n - len(row))
            yield {h: v for h, v in zip(header, row) if h}


def check_columns(path: PathLike, header: Iterable[str], required: Sequence[str]) -> None:
    present = set(header)
    missing = [c for c in required if c not in present]
    if missing:
        raise MissingColumnError(f"{path}: missing column(s) {missing}; found {sorted(c for c in present if c)}")


def require_field(path: PathLike, record: dict, fields: Sequence[str], where: str = "") -> None:
    """Like check_columns for JSON records; `where` says which item (e.g. 'item 3')."""
    missing = [k for k in fields if k not in record]
    if missing:
        raise MissingColumnError(
            f"{path}{(' ' + where) if where else ''}: missing field(s) {missing}; found {sorted(record)}"
        )


# ------------------------------------------------------------------------------------------ splits, tasks


def normalize_split(split: str | None, source: str = "") -> str | None:
    if split is None:
        return None
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"{source or 'split'}: unknown split {split!r}; expected train/val/test (or an alias)")
    return _SPLIT_ALIASES[key]


def check_tasks(tasks: Iterable[str], supported: Sequence[str], adapter: str) -> tuple[str, ...]:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"{adapter}: unknown task {t!r}; expected one of {TASKS}")
        if t not in supported:
            raise ValueError(f"{adapter}: task {t!r} is not available; this source provides {tuple(supported)}")
    return tasks


def check_policy(missing_images: str) -> None:
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {missing_images!r}")


def check_arguments(
    adapter: str, tasks: Iterable[str], supported: Sequence[str], missing_images: str, split: str | None
) -> tuple[tuple[str, ...], str | None]:
    """An adapter's common arguments checked at call time: (tasks, canonical split or None)."""
    tasks = check_tasks(tasks, supported, adapter)
    check_policy(missing_images)
    return tasks, normalize_split(split, adapter)


# ---------------------------------------------------------------------------------------------- images


def resolve_image(path: Path, alternatives: Sequence[Path] = ()) -> Path:
    """The first existing of path and alternatives, else path itself."""
    for cand in (path, *alternatives):
        if cand.is_file():
            return cand
    return path


def sized_image(
    path: Path, missing_images: str, known_size: tuple[int, int] | None = None, source: str = ""
) -> tuple[str, tuple[int, int]]:
    """(path, (width, height)) for one image under the missing-image policy.

    known_size (from the source's metadata) avoids opening the file; a missing file with policy 'allow'
    keeps the path with known_size or (0, 0) meaning unknown.
    """
    if path.is_file():
        if known_size is not None:
            return str(path), known_size
        return str(path), image_size(path)
    if missing_images == "skip":
        log.warning(
            "skipping an example: image not found: %s%s (missing_images='skip')",
            path,
            f" (listed in {source})" if source else "",
        )
        raise SkipExample(str(path))
    if missing_images == "allow":
        return str(path), known_size or (0, 0)
    raise ImageReadError(
        path,
        f"file not found{(' (listed in ' + source + ')') if source else ''}; "
        "pass missing_images='skip' or 'allow' to tolerate missing images",
    )


# ------------------------------------------------------------------------------------------------ labels


def parse_label_value(text: str, path: PathLike = "", column: str = "") -> float:
    """CheXpert-style cell: '1.0' / '0.0' / '-1.0' or empty (NaN)."""
    text = text.strip()
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: column {column!r} has non-numeric label value {text!r}") from None
    if value not in (1.0, 0.0, -1.0):
        raise ValueError(f"{path}: column {column!r} has label value {value}, expected 1, 0, -1 or empty")
    return value


def boxes_outside_image(xyxy: Any, size: tuple[int, int]) -> tuple[int, ...]:
    """Indices of [N, 4] pixel xyxy boxes reaching outside [0, width] x [0, height]; () when size is unknown."""
    width, height = size
    if width <= 0 or height <= 0:
        return ()
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    outside = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height)
    return tuple(int(i) for i in np.flatnonzero(outside))


def check_xywh(path: PathLike, where: str, xywh: Any) -> None:
    """ValueError naming the file and record when an (x, y, w, h) box has a negative width or height."""
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    bad = np.flatnonzero((b[:, 2] < 0) | (b[:, 3] < 0))
    if bad.size:
        raise ValueError(f"{path}: {where}: box (x, y, w, h) {b[bad[0]].tolist()} has a negative width or height")


def chexpert_vector(row: dict[str, str], path: PathLike = "") -> np.ndarray:
    """[14] float32 in CheXpert train.csv order, read from the row BY NAME (any source column order)."""
    return np.array([parse_label_value(row[name], path, name) for name in CHEXPERT_LABELS], dtype=np.float32)


def positive_findings(labels: np.ndarray, names: Sequence[str] = CHEXPERT_LABELS) -> str:
    """'|'-joined names of positive (1.0) labels, in vocabulary order; 'No Finding' if none."""
    pos = [n for n, v in zip(names, labels) if v == 1.0]
    return "|".join(pos) if pos else "No Finding"


def clean_text(text: Any) -> str:
    """Collapses whitespace runs (report line wraps) to single spaces."""
    return " ".join(str(text).split()) if text is not None else ""


def as_int_size(width: str, height: str) -> tuple[int, int] | None:
    try:
        return int(float(width)), int(float(height))
    except (TypeError, ValueError):
        return None
