"""The one example schema every dataset adapter and the synthetic benchmark produce.

Boxes are pixel xyxy (x_min, y_min, x_max, y_max) in the frame of the image they belong to, as stored
on disk (before any model resize), with that image's (width, height) kept beside them so converters
can map them to any other convention (see data_pipelines.boxes).
Labels are the 14 CheXpert observations in CheXpert `train.csv` column order with
1.0 positive, 0.0 negative, -1.0 uncertain, NaN not mentioned.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT5_LABELS: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

# Task names shared by adapters, formatting, rewards and evaluation.
TASKS: tuple[str, ...] = (
    "findings",  # generate the FINDINGS section
    "impression",  # generate the IMPRESSION section
    "vqa",  # question -> short answer / `|` list / sentence
    "difference",  # VQA on a (prior, current) pair
    "grounding",  # phrase -> box(es)
    "referring",  # box -> phrase
    "classification",  # image -> finding list
)


@dataclasses.dataclass(frozen=True)
class Box:
    """A labelled box in pixel xyxy of its image (x to the right, y down, image-left = patient right)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str = ""

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x_min, self.y_min, self.x_max, self.y_max)


@dataclasses.dataclass(frozen=True)
class Example:
    """One instruction example.

    images: per image, either a path (str) readable by data_pipelines.load_image, or an in-memory
      2-D float32 array in [0, 1] (synthetic data). Difference questions put the prior study first.
    image_sizes: per image (width, height) in pixels of the stored image; boxes refer to the image
      at `box_image_index` (default: the last, i.e. the current study).
    prompt: the user question or instruction (no chat template, no image placeholders).
    target: the reference answer: a report section, a short answer, a `|`-joined list, or a box text.
    labels: [14] float32 CheXpert vector, or None when the source has no labels.
    question_type: the VQA family (presence, abnormality, location, level, view, type, attribute,
      anatomy, size, plane, gender, difference, ...) or None.
    """

    example_id: str
    dataset: str
    task: str
    images: tuple[Any, ...]
    image_sizes: tuple[tuple[int, int], ...]
    prompt: str
    target: str
    boxes: tuple[Box, ...] = ()
    labels: np.ndarray | None = None
    question_type: str | None = None
    split: str = "train"
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    box_image_index: int = -1

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"example {self.example_id!r}: unknown task {self.task!r}; expected one of {TASKS}")
        if len(self.images) != len(self.image_sizes):
            raise ValueError(
                f"example {self.example_id!r}: {len(self.images)} images but {len(self.image_sizes)} image_sizes"
            )
        if self.labels is not None and np.shape(self.labels) != (len(CHEXPERT_LABELS),):
            raise ValueError(f"example {self.example_id!r}: labels must have shape (14,), got {np.shape(self.labels)}")
