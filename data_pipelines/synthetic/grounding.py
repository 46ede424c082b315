"""Grounding (phrase -> box) and referring (box -> finding) items of a rendered study.

Boxes are the exact tight pixel boxes of the finding masks in the stored image; studies without findings
ground normal anatomy (heart, right lung, left lung) instead. By default a grounding prompt names the finding
only ("pleural effusion"): its side and zone must come from the image, and the answer boxes every instance of
it. `located=True` names them as well ("pleural effusion in the right lower zone"; the benchmark before
2026-12-04), which lets a model that ignores the image guess the box from the question.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipelines.boxes import format_box_text, format_boxes_text
from data_pipelines.synthetic.config import GROUNDING_TRACES
from data_pipelines.synthetic.reasoning import Step, describe, lungs_step

GROUNDING_PROMPTS = (
    "Locate the following finding in the chest X-ray and give its bounding box: {phrase}",
    "Where is the {phrase}? Answer with its bounding box.",
    "Give the bounding box of the {phrase} in this image.",
)
REFERRING_PROMPTS = (
    "What finding is shown in the region {box} of this chest X-ray?",
    "What is in the region {box}?",
    "Name the abnormality inside {box}.",
)
ANATOMY = ("heart", "right lung", "left lung")


@dataclasses.dataclass(frozen=True)
class GroundingItem:
    prompt: str
    target: str
    phrase: str
    boxes: tuple[tuple[int, int, int, int], ...]
    steps: tuple[Step, ...]
    answer_is_box: bool


def group_phrase(group: Sequence) -> str:
    """'lung nodule in the right upper zone', 'right pleural effusion', 'pulmonary edema', 'pacemaker'."""
    f = group[0]
    if len(group) == 1 and f.zone and f.side in ("right", "left"):
        return f"{f.phrase} in the {f.location}"
    if f.side in ("right", "left"):
        return f"{f.side} {f.phrase}"
    return f.phrase


def finding_groups(findings: Sequence, by_side: bool = True) -> list[list]:
    """Findings grouped by (name, kind, side), or by (name, kind) when not by_side, in order of appearance."""
    groups: dict[tuple, list] = {}
    for f in findings:
        groups.setdefault((f.name, f.kind, f.side) if by_side else (f.name, f.kind), []).append(f)
    return list(groups.values())


def grounding_item(
    study, rng: np.random.Generator, located: bool = False, trace: str = "anatomy_first"
) -> GroundingItem:
    """A phrase -> boxes item; `located`: the phrase names side and zone (module docstring). `trace`:
    "anatomy_first" opens on both lungs' boxes and ends each step on the phrase ("... at [box] in the right
    upper zone matches the lung nodule"); "phrase_first" starts each step from the asked phrase and ends it on
    the box, so the boxed answer copies the box right before it ("the lung nodule is ... at [box]"); "box_first"
    gives the box right after the phrase, as an SFT answer follows its prompt ("the lung nodule lies at [box]
    and shows ...")."""
    if trace not in GROUNDING_TRACES:
        raise ValueError(f"grounding trace {trace!r}; expected one of {GROUNDING_TRACES}")
    first = (lungs_step(study),) if trace == "anatomy_first" else ()
    groups = finding_groups(study.findings, by_side=located)
    template = GROUNDING_PROMPTS[int(rng.integers(len(GROUNDING_PROMPTS)))]
    if not groups:
        name = ANATOMY[int(rng.integers(len(ANATOMY)))]
        box = study.anatomy_boxes[name]
        steps = first + (Step(f"the {name} is outlined by {{0}}", (box,)),)
        return GroundingItem(template.format(phrase=name), format_box_text(box), name, (box,), steps, True)
    group = groups[int(rng.integers(len(groups)))]
    phrase = group_phrase(group) if located else group[0].phrase
    boxes = tuple(f.bbox for f in group)
    where = (lambda f: "") if located else (lambda f: f.where)  # unlocated: the trace reads side and zone
    if trace == "phrase_first":
        steps = tuple(Step(f"the {phrase} is {describe(f)}{where(f)} at {{0}}", (f.bbox,)) for f in group)
    elif trace == "box_first":
        steps = tuple(Step(f"the {phrase} lies at {{0}} and shows {describe(f)}{where(f)}", (f.bbox,)) for f in group)
    else:
        steps = first + tuple(Step(f"{describe(f)} at {{0}}{where(f)} matches the {phrase}", (f.bbox,)) for f in group)
    return GroundingItem(template.format(phrase=phrase), format_boxes_text(boxes), phrase, boxes, steps, True)


def referring_item(study, rng: np.random.Generator) -> GroundingItem:
    template = REFERRING_PROMPTS[int(rng.integers(len(REFERRING_PROMPTS)))]
    if not study.findings:
        name = ANATOMY[int(rng.integers(len(ANATOMY)))]
        box = study.anatomy_boxes[name]
        steps = (Step("the region {0} is a normal structure without focal abnormality", (box,)),)
        return GroundingItem(template.format(box=format_box_text(box)), name, name, (box,), steps, False)
    f = study.findings[int(rng.integers(len(study.findings)))]
    where = f.where or (" over the heart" if f.name == "Cardiomegaly" else " in the mediastinum")
    steps = (Step(f"the region {{0}} lies{where}", (f.bbox,)), Step(f"it contains {describe(f)} {{0}}", (f.bbox,)))
    return GroundingItem(template.format(box=format_box_text(f.bbox)), f.phrase, f.phrase, (f.bbox,), steps, False)
