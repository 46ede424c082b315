"""MIMIC-style FINDINGS / IMPRESSION text from the rendered ground truth, and the CheXpert-14 vector it implies.

Every sentence is generated together with the CheXpert mentions it makes (positive 1, negated 0, hedged -1),
and the label vector is aggregated from those mentions with the chexpert-labeler rules:
conflicting mentions resolve 1 > -1 > 0 except that 0 with -1 gives -1; unmentioned -> NaN; "No Finding" is 1
exactly when no observation other than Support Devices is 1 or -1 (else NaN).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data_pipelines.schema import CHEXPERT_LABELS
from data_pipelines.synthetic.config import ZONED, SyntheticConfig
from data_pipelines.synthetic.findings import FINDING_NAMES, Finding

Sentence = tuple[str, dict]  # (text, {CheXpert name: 1.0 | 0.0 | -1.0})

ZONE_WORDS = {
    "upper": ("upper zone", "upper lung"),
    "middle": ("mid zone", "middle zone"),
    "lower": ("lower zone", "lung base"),
}
NEGATIVES: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "Consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "Edema": ("No pulmonary edema.", "There is no pulmonary edema."),
    "Cardiomegaly": ("The heart size is normal.", "Normal heart size."),
    "Enlarged Cardiomediastinum": ("The mediastinal contours are normal.", "Normal mediastinal contours."),
    "Fracture": ("No displaced rib fracture.", "No acute rib fracture is seen."),
    "Lung Lesion": ("No suspicious pulmonary nodule.", "No pulmonary nodules."),
    "Pneumonia": ("No evidence of pneumonia.", "No radiographic evidence of pneumonia."),
    "Atelectasis": ("No atelectasis.", "There is no atelectasis."),
    "Lung Opacity": ("No focal opacity.", "No focal airspace opacity."),
}
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
)
HEDGES = ("Possible", "Questionable")


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    findings: str
    impression: str
    labels: np.ndarray  # [14] float32, CHEXPERT_LABELS order
    mentions: tuple[tuple[str, float], ...]  # every (CheXpert name, value) the text makes, in order


def aggregate(mentions: Sequence[tuple[str, float]]) -> np.ndarray:
    """chexpert-labeler aggregation of mentions into the 14-vector (see module docstring)."""
    values: dict[str, set[float]] = {}
    for name, value in mentions:
        if name not in FINDING_NAMES:
            raise ValueError(f"data_pipelines/synthetic/reports.py: mention of unknown observation {name!r}")
        values.setdefault(name, set()).add(float(value))
    labels = np.full(len(CHEXPERT_LABELS), np.nan, np.float32)
    for name, vals in values.items():
        labels[CHEXPERT_LABELS.index(name)] = 1.0 if 1.0 in vals else (-1.0 if -1.0 in vals else 0.0)
    finding = any(v in (1.0, -1.0) for n, v in mentions if n != "Support Devices")
    labels[0] = np.nan if finding else 1.0
    return labels


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _loc(rng, f: Finding) -> str:
    """'right lower zone' / 'right lung base' for zone-placed findings, else the side."""
    return f"{f.side} {_pick(rng, ZONE_WORDS[f.zone])}" if f.name in ZONED and f.side in ("right", "left") else f.side


def _join(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def describe(name: str, group: Sequence[Finding], rng: np.random.Generator) -> Sentence:
    """One FINDINGS sentence for all instances of a finding type, with its mentions."""
    f = group[0]
    hedged = f.hedged
    value = -1.0 if hedged else 1.0
    sev = f.severity
    locs = _join(list(dict.fromkeys(_loc(rng, g) for g in group)))
    sides = sorted({g.side for g in group})
    side = "bilateral" if sides == ["left", "right"] else f.side
    hedge = _pick(rng, HEDGES)
    if name == "Lung Lesion":
        if hedged:
            text = f"{hedge} pulmonary {f.kind}{'s' if len(group) > 1 else ''} in the {locs}."
        elif len(group) > 1:
            text = _pick(
                rng,
                (
                    f"There are {len(group)} pulmonary nodules, in the {locs}.",
                    f"{len(group)} pulmonary nodules are seen in the {locs}.",
                ),
            )
        else:
            size = f"{f.size_mm / 10:.1f} cm"
            text = _pick(
                rng, (f"There is a {size} {f.kind} in the {locs}.", f"A {size} {f.kind} is seen in the {locs}.")
            )
    elif name in ("Consolidation", "Atelectasis"):
        word = name.lower()
        if hedged:
            text = _pick(rng, (f"{hedge} {word} in the {locs}.", f"{_cap(word)} in the {locs} cannot be excluded."))
        else:
            text = _pick(rng, (f"{_cap(sev)} {word} in the {locs}.", f"There is {sev} {word} in the {locs}."))
    elif name == "Pneumonia":
        text = (
            _pick(rng, (f"{hedge} pneumonia in the {locs}.", f"Pneumonia in the {locs} cannot be excluded."))
            if hedged
            else _pick(
                rng,
                (
                    f"Findings are consistent with {sev} pneumonia in the {locs}.",
                    f"There is {sev} pneumonia in the {locs}.",
                ),
            )
        )
    elif name == "Lung Opacity":
        text = (
            f"{hedge} opacity in the {locs}."
            if hedged
            else _pick(rng, (f"{_cap(sev)} opacity in the {locs}.", f"There is a {sev} opacity in the {locs}."))
        )
    elif name == "Pleural Effusion":
        sizes = sorted({g.severity for g in group})
        size = sizes[0] if len(sizes) == 1 else "small to moderate" if "large" not in sizes else "moderate to large"
        noun = "pleural effusions" if side == "bilateral" else "pleural effusion"
        text = (
            f"{hedge} {size} {side} {noun}."
            if hedged
            else _pick(
                rng,
                (
                    f"{_cap(size)} {side} {noun}.",
                    f"There is a {size} {side} {noun}."
                    if side != "bilateral"
                    else f"There are {size} bilateral {noun}.",
                ),
            )
        )
    elif name == "Pneumothorax":
        text = (
            f"A {side} pneumothorax cannot be excluded."
            if hedged
            else _pick(rng, (f"{_cap(sev)} {side} pneumothorax.", f"There is a {sev} {side} pneumothorax."))
        )
    elif name == "Edema":
        text = (
            f"{hedge} {sev} pulmonary edema."
            if hedged
            else _pick(
                rng, (f"{_cap(sev)} pulmonary edema.", f"Perihilar haziness consistent with {sev} pulmonary edema.")
            )
        )
    elif name == "Cardiomegaly":
        adverb = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}[sev]
        text = (
            f"{hedge} cardiomegaly."
            if hedged
            else _pick(rng, (f"{_cap(sev)} cardiomegaly.", f"The cardiac silhouette is {adverb} enlarged."))
        )
    elif name == "Enlarged Cardiomediastinum":
        text = (
            "Possible widening of the mediastinum."
            if hedged
            else _pick(rng, ("The mediastinum is widened.", "Widened mediastinal contour."))
        )
    elif name == "Fracture":
        text = (
            f"{hedge} nondisplaced {side} rib fracture."
            if hedged
            else _pick(rng, (f"Displaced fracture of a {side} posterior rib.", f"There is a {side} rib fracture."))
        )
    elif name == "Pleural Other":
        text = f"{hedge} {side} apical pleural thickening." if hedged else f"{_cap(side)} apical pleural thickening."
    elif name == "Support Devices":
        text = {
            "pacemaker": f"{_cap(side)}-sided pacemaker with its lead projecting over the heart.",
            "venous catheter": f"{_cap(side)} subclavian central venous catheter with its tip in the SVC.",
            "enteric tube": "Enteric tube courses below the diaphragm into the stomach.",
        }[f.kind]
    else:
        raise ValueError(f"data_pipelines/synthetic/reports.py: no sentence for finding {name!r}")
    return text, {name: value}


def impression_line(name: str, group: Sequence[Finding], change: str | None, rng) -> Sentence:
    """A short IMPRESSION item, prefixed with the interval change when there is a prior."""
    f = group[0]
    phrase = {
        "Lung Lesion": f"pulmonary {f.kind}" + ("s" if len(group) > 1 else ""),
        "Support Devices": f.phrase,
        "Enlarged Cardiomediastinum": "widened mediastinum",
        "Fracture": "rib fracture",
        "Pleural Other": "apical pleural thickening",
        "Lung Opacity": "opacity",
        "Edema": "pulmonary edema",
    }.get(name, name.lower())
    sides = sorted({g.side for g in group if g.side})
    where = "bilateral" if sides == ["left", "right"] else (sides[0] if sides else "")
    if len(group) == 1 and name in ZONED and f.side in ("right", "left"):
        where = _loc(rng, f)
    text = f"{where} {phrase}".strip()
    if f.hedged:
        return f"{_pick(rng, HEDGES)} {text}.", {name: -1.0}
    prefix = {"new": "New", "increased": "Increased", "decreased": "Decreased", "unchanged": "Unchanged"}.get(change)
    return (f"{prefix} {text}." if prefix else f"{_cap(text)}."), {name: 1.0}


def make_report(
    findings: Sequence[Finding],
    view: str,
    changes: Sequence[tuple[str, str]],
    rng: np.random.Generator,
    config: SyntheticConfig,
) -> Report:
    groups: dict[str, list[Finding]] = {}
    for f in findings:
        groups.setdefault(f.name, []).append(f)
    change_of = dict(changes)
    header = _pick(
        rng,
        {
            "PA": ("PA view of the chest.", "Frontal PA radiograph of the chest."),
            "AP": ("Single portable AP view of the chest.", "AP upright view of the chest."),
        }[view],
    )
    lead: list[Sentence] = [(header, {})]
    if changes:
        lead.append(
            (_pick(rng, ("Comparison is made with the prior study.", "Compared with the prior radiograph.")), {})
        )
    devices = [describe(n, g, rng) for n, g in groups.items() if n == "Support Devices"]
    lungs = [
        describe(n, g, rng)
        for n, g in groups.items()
        if n not in ("Support Devices", "Cardiomegaly", "Enlarged Cardiomediastinum", "Fracture")
    ]
    heart = [describe(n, g, rng) for n, g in groups.items() if n in ("Cardiomegaly", "Enlarged Cardiomediastinum")]
    bones = [describe(n, g, rng) for n, g in groups.items() if n == "Fracture"]
    parenchymal = {"Lung Lesion", "Consolidation", "Pneumonia", "Lung Opacity", "Atelectasis", "Edema"}
    absent = [
        n
        for n in NEGATIVES
        if n not in groups
        and rng.random() < config.negative_rate
        and not (n == "Lung Opacity" and parenchymal & set(groups))
    ]  # "no opacity" would contradict
    if "Pleural Effusion" in absent and "Pneumothorax" in absent and rng.random() < 0.5:
        absent = [n for n in absent if n not in ("Pleural Effusion", "Pneumothorax")]
        lungs.append(("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}))
    for n in absent:
        target = heart if n in ("Cardiomegaly", "Enlarged Cardiomediastinum") else bones if n == "Fracture" else lungs
        target.append((_pick(rng, NEGATIVES[n]), {n: 0.0}))
    if not parenchymal & set(groups) and rng.random() < 0.6:
        lungs.insert(0, (_pick(rng, ("The lungs are clear.", "Lungs are well expanded and clear.")), {}))
    if not bones and rng.random() < 0.4:
        bones.append(("No acute osseous abnormality.", {}))
    order = [lungs, heart] if rng.random() < 0.6 else [heart, lungs]
    rng.shuffle(lungs)
    body = lead + devices + order[0] + order[1] + bones
    # IMPRESSION: positive findings by importance, interval changes, resolved findings; else a normal line
    impression: list[Sentence] = [
        impression_line(n, g, change_of.get(n), rng) for n, g in groups.items() if n != "Support Devices"
    ]
    for name, change in changes:
        if change == "resolved":
            impression.append((f"Interval resolution of the previously seen {name.lower()}.", {name: 0.0}))
    if not impression:
        impression.append((_pick(rng, NORMAL_IMPRESSIONS), {}))
    if "Support Devices" in groups:
        impression.append((f"{_cap(groups['Support Devices'][0].phrase)} in place.", {"Support Devices": 1.0}))
    mentions = tuple((n, v) for _, m in body + impression for n, v in m.items())
    return Report(
        findings=" ".join(t for t, _ in body),
        impression=" ".join(t for t, _ in impression),
        labels=aggregate(mentions),
        mentions=mentions,
    )
