"""CLEVR-style question families over a study's ground truth, each question carrying an executable program.

A program is a tuple of (op, arg) steps run left to right on a Facts record (findings, view, interval changes),
so every answer is computed, never written by hand. `instantiate` lists every question of a family that a
study can ask; balanced generation picks the answer first and rejection-samples studies until one can ask a
question with that answer (done in dataset.py, which owns the study stream).

Answer grammar (paper.md §3): short answers of at most two words, `|`-joined lists, or a sentence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.synthetic.anatomy import SIDES, ZONES
from data_pipelines.synthetic.config import ZONED
from data_pipelines.synthetic.findings import (
    FINDING_NAMES,
    KINDS,
    LEVEL_WORDS,
    LEVELED,
    NOT_LATERAL,
    PHRASES,
    SIZE_WORDS,
    SIZED,
)

Program = tuple[tuple[str, Any], ...]

# Answer spaces of the balanced families (answers drawn uniformly from these before rejection sampling).
ANSWERS: dict[str, tuple[str, ...]] = {
    "presence": ("yes", "no"),
    "location": ("right", "left", "bilateral"),
    "zone": ZONES,
    "level": LEVEL_WORDS,
    "size": SIZE_WORDS,
    "view": ("PA", "AP"),
    "count": ("0", "1", "2", "3"),
    "type": KINDS["Lung Lesion"] + KINDS["Support Devices"],
    "change": ("new", "resolved", "increased", "decreased", "unchanged"),
}
VQA_FAMILIES = ("presence", "abnormality", "location", "zone", "level", "size", "view", "count", "type")
DIFFERENCE_FAMILIES = ("change", "new_findings", "describe_changes")
NONE_ANSWER = "none"


@dataclasses.dataclass(frozen=True)
class Facts:
    """What programs run on: findings (anything with name/side/zone/kind/severity), view, interval changes."""

    findings: tuple
    view: str
    changes: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Question:
    family: str
    question_type: str  # the Example.question_type
    text: str
    program: Program
    answer: str


@dataclasses.dataclass(frozen=True)
class Change:
    name: str
    change: str


class ProgramError(ValueError):
    """A program that cannot run on these facts (e.g. `unique` on several objects)."""


def answer_term(finding) -> str:
    """The list / referring answer word(s) for a finding: its kind for devices and lesions, else its phrase."""
    return finding.phrase


def execute(program: Program, facts: Facts) -> str:
    """Runs a program; returns the answer string."""
    value: Any = None
    for op, arg in program:
        if op == "scene":
            value = tuple(facts.findings)
        elif op == "filter_name":
            value = tuple(f for f in value if f.name == arg)
        elif op == "filter_side":
            value = tuple(f for f in value if f.side == arg)
        elif op == "filter_kind":
            value = tuple(f for f in value if f.kind == arg)
        elif op == "exist":
            value = "yes" if value else "no"
        elif op == "count_names":
            value = str(len({f.name for f in value}))
        elif op == "unique":
            if len(value) != 1:
                raise ProgramError(f"unique needs exactly one finding, got {len(value)}")
            value = value[0]
        elif op == "query_side":
            sides = {s for f in value for s in (SIDES if f.side == "bilateral" else (f.side,))}
            if not sides or not sides <= set(SIDES):
                raise ProgramError(f"query_side needs lateral findings, got {sides}")
            value = "bilateral" if len(sides) == 2 else sides.pop()
        elif op == "query_zone":
            value = value.zone
        elif op in ("query_severity", "query_kind"):
            attr = "severity" if op == "query_severity" else "kind"
            vals = {getattr(f, attr) for f in value}
            if len(vals) != 1 or "" in vals:
                raise ProgramError(f"{op} needs one defined value, got {vals}")
            value = vals.pop()
        elif op == "list_terms":
            ordered = sorted(value, key=lambda f: FINDING_NAMES.index(f.name))
            terms = list(dict.fromkeys(answer_term(f) for f in ordered))
            value = "|".join(terms) if terms else NONE_ANSWER
        elif op == "view":
            value = facts.view
        elif op == "changes":
            value = tuple(Change(n, c) for n, c in facts.changes)
        elif op == "query_change":
            found = {c.change for c in value}
            if len(found) != 1:
                raise ProgramError(f"query_change needs one change, got {found}")
            value = found.pop()
        elif op == "filter_change":  # current findings whose type changed in this way
            names = {n for n, c in facts.changes if c == arg}
            value = tuple(f for f in value if f.name in names)
        elif op == "describe_changes":
            value = describe_changes(facts)
        else:
            raise ProgramError(f"unknown program op {op!r}")
    if not isinstance(value, str):
        raise ProgramError(f"program did not end in an answer: {program}")
    return value


def describe_changes(facts: Facts) -> str:
    """One sentence naming every interval change, e.g. 'new right pleural effusion and resolved pneumothorax'."""
    parts = []
    for name, change in facts.changes:
        group = [f for f in facts.findings if f.name == name]
        sides = sorted({f.side for f in group if f.side in SIDES or f.side == "bilateral"})
        side = "bilateral" if len(sides) == 2 else (sides[0] if sides else "")
        phrase = group[0].phrase if group else PHRASES[name]
        parts.append(f"{change} {side} {phrase}".replace("  ", " ").strip())
    if not parts:
        return "no interval change"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# ------------------------------------------------------------------------------------------ templates

_T = {
    "presence": (
        "Is there {phrase} in this image?",
        "Does this chest X-ray show {phrase}?",
        "Is there evidence of {phrase}?",
    ),
    "abnormality": (
        "What abnormalities are seen in this image?",
        "List the abnormal findings in this chest X-ray.",
        "Which abnormalities are present?",
    ),
    "location": (
        "Which side is the {phrase} on?",
        "Where is the {phrase}: on the left, on the right, or both?",
        "On which side of the patient is the {phrase}?",
    ),
    "zone": ("In which zone of the {side} lung is the {phrase}?", "Which zone of the {side} lung has the {phrase}?"),
    "level": ("How severe is the {phrase}?", "What is the severity of the {phrase}?", "What level is the {phrase}?"),
    "size": ("What is the size of the {phrase}?", "How large is the {phrase}?"),
    "view": ("What is the view of this chest X-ray?", "Is this a PA or an AP view?", "Which projection is this?"),
    "count": ("How many different abnormalities are present?", "How many abnormal findings are in this image?"),
    "type_device": ("What type of support device is present?", "Which device is seen in this image?"),
    "type_lesion": ("Is the lung lesion a nodule or a mass?", "What type of lung lesion is present?"),
    "change": (
        "How has the {phrase} changed compared with the prior image?",
        "What is the change in the {phrase} since the prior study?",
    ),
    "new_findings": (
        "What new findings are seen compared with the prior image?",
        "Which findings are new since the prior study?",
    ),
    "describe_changes": (
        "What has changed compared with the prior image?",
        "Describe the interval change between the two images.",
    ),
}
MASS_NOUNS = (
    "cardiomegaly",
    "atelectasis",
    "consolidation",
    "pneumonia",
    "pulmonary edema",
    "enlarged cardiomediastinum",
    "pleural thickening",
)


def name_phrase(name: str) -> str:
    """Question wording of a CheXpert name (the generic noun for lesions and devices)."""
    return {"Lung Lesion": "lung lesion", "Support Devices": "support device"}.get(name, PHRASES[name])


def _with_article(phrase: str) -> str:
    return phrase if phrase in MASS_NOUNS else ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _q(family: str, qtype: str, templates: Sequence[str], program: Program, facts: Facts, **fmt) -> list[Question]:
    try:
        answer = execute(program, facts)
    except ProgramError:
        return []
    return [Question(family, qtype, t.format(**fmt), program, answer) for t in templates]


def instantiate(family: str, facts: Facts) -> list[Question]:
    """Every question of `family` this study can ask (all templates), with computed answers."""
    present = list(dict.fromkeys(f.name for f in facts.findings))
    out: list[Question] = []
    if family == "presence":
        for name in FINDING_NAMES:
            prog = (("scene", None), ("filter_name", name), ("exist", None))
            out += _q(family, "presence", _T["presence"], prog, facts, phrase=_with_article(name_phrase(name)))
    elif family == "abnormality":
        out += _q(family, "abnormality", _T["abnormality"], (("scene", None), ("list_terms", None)), facts)
    elif family == "location":
        for name in present:
            group = [f for f in facts.findings if f.name == name]
            if name in NOT_LATERAL or any(f.side not in (*SIDES, "bilateral") for f in group):
                continue
            prog = (("scene", None), ("filter_name", name), ("query_side", None))
            out += _q(family, "location", _T["location"], prog, facts, phrase=group[0].phrase)
    elif family == "zone":
        for name in present:
            if name not in ZONED:
                continue
            for side in SIDES:
                prog = (
                    ("scene", None),
                    ("filter_name", name),
                    ("filter_side", side),
                    ("unique", None),
                    ("query_zone", None),
                )
                phrase = next(f.phrase for f in facts.findings if f.name == name)
                out += _q(family, "location", _T["zone"], prog, facts, phrase=phrase, side=side)
    elif family in ("level", "size"):
        for name in present:
            if name not in (LEVELED if family == "level" else SIZED):
                continue
            prog = (("scene", None), ("filter_name", name), ("query_severity", None))
            phrase = name_phrase(name) if name == "Lung Lesion" else PHRASES[name]
            out += _q(family, family, _T[family], prog, facts, phrase=phrase)
    elif family == "view":
        out += _q(family, "view", _T["view"], (("view", None),), facts)
    elif family == "count":
        out += _q(family, "count", _T["count"], (("scene", None), ("count_names", None)), facts)
    elif family == "type":
        for name, key in (("Support Devices", "type_device"), ("Lung Lesion", "type_lesion")):
            if name in present:
                prog = (("scene", None), ("filter_name", name), ("query_kind", None))
                out += _q(family, "type", _T[key], prog, facts)
    elif family == "change":
        for name, _ in facts.changes:
            prog = (("changes", None), ("filter_name", name), ("query_change", None))
            group = [f for f in facts.findings if f.name == name]
            phrase = group[0].phrase if group else name_phrase(name)
            out += _q(family, "difference", _T["change"], prog, facts, phrase=phrase)
    elif family == "new_findings":
        prog = (("scene", None), ("filter_change", "new"), ("list_terms", None))
        out += _q(family, "difference", _T["new_findings"], prog, facts)
    elif family == "describe_changes":
        out += _q(family, "difference", _T["describe_changes"], (("describe_changes", None),), facts)
    else:
        raise ValueError(f"data_pipelines/synthetic/vqa.py: unknown question family {family!r}")
    return out


def choose_question(questions: Sequence[Question], answer: str | None, rng: np.random.Generator) -> Question | None:
    """A random question among those whose answer is `answer` (any answer when None)."""
    pool = [q for q in questions if answer is None or q.answer == answer]
    return pool[int(rng.integers(len(pool)))] if pool else None
