"""Step-by-step reasoning traces computed from ground truth, in the DeepMedix-R1 answer format (paper.md §4):

    <think>1. step citing [x1, y1, x2, y2]; 2. step ...</think>
    The answer is: \\boxed{answer}

Steps keep their boxes apart from their text ({0}, {1} placeholders), so a formatter can re-render a trace
with boxes converted to another frame (e.g. the resized Qwen2.5-VL input). Corrupted variants (wrong side,
shifted boxes) serve as negatives for reward tests.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from data_pipelines.boxes import format_box_text
from data_pipelines.synthetic.vqa import MASS_NOUNS, name_phrase
from dmx_jax.rewards.paper import last_boxed

BoxT = tuple[int, int, int, int]

DESCRIPTIONS = {
    "nodule": "a round well-defined opacity",
    "mass": "a large round opacity",
    "Consolidation": "a dense airspace opacity",
    "Pneumonia": "a patchy airspace opacity",
    "Lung Opacity": "a hazy ground-glass opacity",
    "Atelectasis": "a plate-like linear opacity",
    "Pleural Effusion": "basal fluid with a meniscus blunting the costophrenic angle",
    "Pneumothorax": "a lucent rim without lung markings beyond a visceral pleural line",
    "Edema": "perihilar haze with indistinct vessels",
    "Cardiomegaly": "an enlarged cardiac silhouette",
    "Enlarged Cardiomediastinum": "a widened upper mediastinum",
    "Fracture": "a gap and step-off in a posterior rib",
    "Pleural Other": "a soft-tissue cap along the lung apex",
    "pacemaker": "a pacemaker generator with a lead",
    "venous catheter": "a radiopaque catheter ending in the superior vena cava",
    "enteric tube": "a radiopaque tube ending in the stomach",
}


@dataclasses.dataclass(frozen=True)
class Step:
    text: str  # with {0}, {1}, ... where the boxes go; no ';', '[' or ']'
    boxes: tuple[BoxT, ...] = ()


def render_trace(steps: Sequence[Step], answer: str, box_format: Callable[[BoxT], str] = format_box_text) -> str:
    body = "; ".join(f"{k}. {s.text.format(*(box_format(b) for b in s.boxes))}" for k, s in enumerate(steps, 1))
    return f"<think>{body}</think>\nThe answer is: \\boxed{{{answer}}}"


_BOX_RE = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


def parse_trace(text: str) -> tuple[list[BoxT], str | None]:
    """(boxes cited inside <think>, content of the last \\boxed{...} with nested braces) of a trace."""
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    boxes = [tuple(int(v) for v in m.groups()) for m in _BOX_RE.finditer(think.group(1) if think else "")]
    return boxes, last_boxed(text)


# ----------------------------------------------------------------------------------------- step builders


def describe(f) -> str:
    return DESCRIPTIONS.get(f.kind) or DESCRIPTIONS[f.name]


def noun_phrase(f) -> str:
    """'a small lung nodule', 'mild atelectasis', 'an enteric tube'."""
    text = f"{f.severity} {f.phrase}".strip()
    if f.phrase in MASS_NOUNS:
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def finding_step(f) -> Step:
    return Step(f"{describe(f)} at {{0}} is {noun_phrase(f)}{f.where}", (f.bbox,))


def lungs_step(study, text: str = "inspect the right lung {0} and the left lung {1}") -> Step:
    return Step(text, (study.anatomy_boxes["right lung"], study.anatomy_boxes["left lung"]))


def heart_step(study) -> Step:
    state = "enlarged" if study.ctr > 0.5 else "normal in size"
    return Step(
        f"the heart {{0}} spans {study.ctr:.2f} of the thoracic width so it is {state}", (study.anatomy_boxes["heart"],)
    )


def side_step(f, width: int) -> Step:
    cx = (f.bbox[0] + f.bbox[2]) / 2
    half = "left" if cx < width / 2 else "right"
    patient = "right" if half == "left" else "left"
    return Step(
        f"its centre x = {cx:.0f} lies in the image {half} half {{0}} which is the patient's {patient}", (f.bbox,)
    )


def survey_steps(study) -> list[Step]:
    """Lungs, every finding with its box, heart: the basis of reports, lists and counts."""
    steps = [lungs_step(study)]
    steps += [finding_step(f) for f in study.findings] or [
        lungs_step(study, "no focal abnormality in the right lung {0} or the left lung {1}")
    ]
    if not any(f.name == "Cardiomegaly" for f in study.findings):
        steps.append(heart_step(study))
    return steps


def question_steps(study, question, width: int, style: str = "evidence") -> list[Step]:
    """Steps for a VQA answer. "evidence": the findings the program touches, with their boxes;
    "question_first": a first step naming what the question asks for (so the trace starts next to the question
    and later steps can look back to it), then that evidence, the answer-bearing step as early as it can be."""
    if style == "question_first":
        return _question_first_steps(study, question, width)
    if style != "evidence":
        raise ValueError(
            f"data_pipelines/synthetic/reasoning.py: VQA trace style {style!r}; expected 'evidence' or 'question_first'"
        )
    family = question.family
    prog = dict(question.program)
    name = prog.get("filter_name")
    hits = [f for f in study.findings if f.name == name] if name else []
    if family == "presence":
        if hits:
            return [lungs_step(study)] + [finding_step(f) for f in hits]
        absent = f"no {name_phrase(name)} is seen in the right lung {{0}} or the left lung {{1}}"
        return [lungs_step(study), Step(absent, lungs_step(study).boxes)]
    if family == "location":
        return [s for f in hits for s in (finding_step(f), side_step(f, width))]
    if family == "zone":
        f = next(f for f in hits if f.side == prog["filter_side"])
        lung = study.anatomy_boxes[f"{f.side} lung"]
        cy = (f.bbox[1] + f.bbox[3]) / 2
        return [
            Step(f"the {f.side} lung {{0}} spans rows {lung[1]} to {lung[3]}", (lung,)),
            finding_step(f),
            Step(f"its centre row {cy:.0f} lies in the {f.zone} third of the lung {{0}}", (lung,)),
        ]
    if family in ("level", "size"):
        steps = [finding_step(f) for f in hits]
        if name == "Cardiomegaly":
            steps.append(heart_step(study))
        else:
            steps.append(Step(f"the largest extent is {max(f.size_mm for f in hits):.0f} mm at {{0}}", (hits[0].bbox,)))
        return steps
    if family == "view":
        clav = "high above the apices" if study.view == "AP" else "over the lung apices"
        return [
            heart_step(study),
            Step(
                f"the clavicles project {clav} near {{0}} consistent with a {study.view} projection",
                (study.anatomy_boxes["right lung"],),
            ),
        ]
    if family == "type":
        return [finding_step(f) for f in hits]
    if family in ("count", "abnormality"):
        return survey_steps(study)
    raise ValueError(f"data_pipelines/synthetic/reasoning.py: no steps for family {family!r}")


def _question_first_steps(study, question, width: int) -> list[Step]:
    family = question.family
    name = dict(question.program).get("filter_name")
    evidence = question_steps(study, question, width)
    if family == "view":
        return evidence[::-1]  # the clavicle step states the projection
    if family in ("count", "abnormality"):  # the survey, its opening lungs step replaced
        return [Step(f"{'count' if family == 'count' else 'list'} the abnormal findings")] + evidence[1:]
    look = Step(f"look for the {name_phrase(name)}")  # short: the evidence stays next to the question
    return [look] + (evidence[1:] if family == "presence" else evidence)


def difference_steps(study, question) -> list[Step]:
    """Prior vs current evidence per changed finding type (prior boxes refer to the prior image)."""
    prior = study.prior
    prog = dict(question.program)
    names = [prog["filter_name"]] if "filter_name" in prog else [n for n, _ in study.changes]
    steps = []
    for name, change in study.changes:
        if name not in names:
            continue
        before = [f for f in prior.findings if f.name == name]
        after = [f for f in study.findings if f.name == name]
        phrase = (after or before)[0].phrase if (after or before) else name_phrase(name)
        for label, group in (("prior", before), ("current", after)):
            if group:
                f = group[0]
                size = f" measuring {f.size_mm:.0f} mm" if f.name != "Support Devices" else ""
                steps.append(Step(f"the {label} image shows {noun_phrase(f)}{f.where} at {{0}}{size}", (f.bbox,)))
            else:
                boxes = (study if label == "current" else prior).anatomy_boxes
                steps.append(
                    Step(
                        f"the {label} image shows no {phrase} in the lungs {{0}} {{1}}",
                        (boxes["right lung"], boxes["left lung"]),
                    )
                )
        steps.append(Step(f"so the {phrase} is {change}"))
    return steps or [lungs_step(study, "no interval change in the right lung {0} or the left lung {1}")]


def jitter_boxes(steps: Sequence[Step], rng: np.random.Generator, pixels: int, size: int) -> dict[BoxT, BoxT]:
    """original box -> the box with each edge moved by its own offset in [-pixels, pixels] (inside the image,
    >= 2 px wide and tall), one draw per distinct box so a box cited twice moves alike."""
    out: dict[BoxT, BoxT] = {}
    for b in (b for s in steps for b in s.boxes):
        if b not in out:
            x0, y0, x1, y1 = (int(v) + int(d) for v, d in zip(b, rng.integers(-pixels, pixels + 1, size=4)))
            x0, y0 = min(max(x0, 0), size - 2), min(max(y0, 0), size - 2)
            out[b] = (x0, y0, min(max(x1, x0 + 2), size), min(max(y1, y0 + 2), size))
    return out


# --------------------------------------------------------------------------------------------- negatives

_SIDE_WORD = re.compile(r"\b(right|left)\b")


def _swap_sides(text: str) -> str:
    return _SIDE_WORD.sub(lambda m: "left" if m.group(1) == "right" else "right", text)


def _mirror(box: BoxT, width: int) -> BoxT:
    return (width - box[2], box[1], width - box[0], box[3])


def wrong_side(steps: Sequence[Step], answer: str, width: int) -> tuple[list[Step], str] | None:
    """Sides swapped in every step and in the answer, boxes mirrored; None when nothing is lateral."""
    if not any(_SIDE_WORD.search(s.text) for s in steps) and not _SIDE_WORD.search(answer):
        return None
    out = [Step(_swap_sides(s.text), tuple(_mirror(b, width) for b in s.boxes)) for s in steps]
    return out, _swap_sides(answer)


def shift_box(box: BoxT, size: int) -> BoxT:
    """The box moved by its own width (or height) plus 2 px, so it no longer overlaps the original."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    for dx, dy in ((w + 2, 0), (-(w + 2), 0), (0, h + 2), (0, -(h + 2))):
        if x0 + dx >= 0 and x1 + dx <= size and y0 + dy >= 0 and y1 + dy <= size:
            return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
    # too large to move without overlap: shrink to a corner box away from the original centre
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    qx = 0 if cx > size / 2 else size - 8
    qy = 0 if cy > size / 2 else size - 8
    return (qx, qy, qx + 8, qy + 8)


def shifted_boxes(steps: Sequence[Step], size: int) -> list[Step]:
    return [Step(s.text, tuple(shift_box(b, size) for b in s.boxes)) for s in steps]


def negatives(steps: Sequence[Step], answer: str, size: int, answer_is_box: bool = False) -> dict[str, str]:
    """Corrupted traces: {'wrong_side': ..., 'shifted_box': ...} (wrong_side only when something is lateral)."""
    out = {}
    swapped = wrong_side(steps, answer, size)
    if swapped is not None:
        s, a = swapped
        if answer_is_box:
            a = _mirror_box_text(answer, size)
        out["wrong_side"] = render_trace(s, a)
    shifted_answer = _shift_box_text(answer, size) if answer_is_box else answer
    out["shifted_box"] = render_trace(shifted_boxes(steps, size), shifted_answer)
    return out


def _map_box_text(text: str, fn) -> str:
    return _BOX_RE.sub(lambda m: format_box_text(fn(tuple(int(v) for v in m.groups()))), text)


def _mirror_box_text(text: str, size: int) -> str:
    return _map_box_text(text, lambda b: _mirror(b, size))


def _shift_box_text(text: str, size: int) -> str:
    return _map_box_text(text, lambda b: shift_box(b, size))


def np_boxes(steps: Sequence[Step]) -> np.ndarray:
    """All boxes of a trace, [N, 4] int64, in citation order."""
    return np.array([b for s in steps for b in s.boxes], np.int64).reshape(-1, 4)
