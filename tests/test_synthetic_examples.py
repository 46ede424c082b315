"""Synthetic CXR examples: report/label consistency, balanced answers, VQA answers against a plain reference,
splits and the held-out combination, the schema, the task mix and the grounding prompts.

References are independent of the generator: a plain keyword CheXpert labeler written here and plain-Python
answers from the rendered findings.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest
from helpers.synthetic_configs import CFG
from helpers.synthetic_configs import only_finding as _only

from data_pipelines.schema import CHEXPERT_LABELS, Example
from data_pipelines.synthetic import config as C
from data_pipelines.synthetic import dataset as D
from data_pipelines.synthetic import scene as S
from data_pipelines.synthetic import vqa
from data_pipelines.synthetic.config import SyntheticConfig
from data_pipelines.synthetic.findings import KIND_PHRASES, PHRASES

# --------------------------------------------------------------------------------------- report / labels

_KEYWORDS = {
    "Pleural Effusion": r"effusion",
    "Pneumothorax": r"pneumothorax",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelectasis",
    "Edema": r"edema",
    "Lung Opacity": r"opacit",
    "Lung Lesion": r"nodule|\bmass\b",
    "Cardiomegaly": r"cardiomegaly|cardiac silhouette|heart size",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Pleural Other": r"pleural thickening",
    "Support Devices": r"pacemaker|catheter|tube",
}
_NEGATION = re.compile(r"\bno\b|\bnormal\b|resolution|resolved|without")
_HEDGE = re.compile(r"possible|questionable|cannot be excluded|may represent|may reflect")


def keyword_labels(text: str) -> np.ndarray:
    """A plain sentence-level rule labeler (keywords, negation and hedge cues, chexpert-labeler aggregation)."""
    mentions: dict[str, list[float]] = {}
    for sentence in re.split(r"(?<=\.)\s+", text.lower()):
        for name, pattern in _KEYWORDS.items():
            if re.search(pattern, sentence):
                value = 0.0 if _NEGATION.search(sentence) else -1.0 if _HEDGE.search(sentence) else 1.0
                mentions.setdefault(name, []).append(value)
    out = np.full(14, np.nan, np.float32)
    for name, vals in mentions.items():
        out[CHEXPERT_LABELS.index(name)] = 1.0 if 1.0 in vals else (-1.0 if -1.0 in vals else 0.0)
    abnormal = any(v in (1.0, -1.0) for n, vals in mentions.items() if n != "Support Devices" for v in vals)
    out[0] = np.nan if abnormal else 1.0
    return out


def test_labels_match_report_text():
    cfg = SyntheticConfig(hedge_rate=0.4, negative_rate=0.6, prior_rate=0.5)
    kinds = {1.0: 0, 0.0: 0, -1.0: 0}
    for i in range(120):
        s = D.study("train", i, cfg)
        text = s.findings_text + " " + s.impression_text
        np.testing.assert_array_equal(s.labels, keyword_labels(text), err_msg=text)
        for f in s.findings:  # ground truth -> label: positive 1, hedged -1
            assert s.labels[CHEXPERT_LABELS.index(f.name)] == (-1.0 if f.hedged else 1.0), (f.name, text)
        for v in s.labels[1:]:
            if not np.isnan(v):
                kinds[float(v)] += 1
    assert min(kinds.values()) > 10, kinds  # positives, negatives and hedges all exercised


def test_no_finding_rule():
    normal = [D.study("train", i, SyntheticConfig(p_normal=1.0)) for i in range(5)]
    for s in normal:
        assert s.labels[0] == 1.0 and not s.findings
        assert not np.any(s.labels[1:] == 1.0)
    for s in (D.study("train", i, _only("Pneumothorax")) for i in range(3)):
        assert np.isnan(s.labels[0])
    for s in (D.study("train", i, _only("Support Devices")) for i in range(3)):  # devices alone: still normal
        assert s.labels[0] == 1.0 and s.labels[CHEXPERT_LABELS.index("Support Devices")] == 1.0


# -------------------------------------------------------------------------------------------- balance


def _family_answers(family: str, n: int, with_prior: bool = False) -> list[str]:
    out, missed = [], 0
    for i in range(n):
        gidx = C.global_index("train", i, CFG)
        q, _, target = D.balanced_question(CFG, gidx, family, C.rng_for(CFG.seed, gidx, "question"), with_prior)
        assert q.family == family
        missed += q.answer != target
        out.append(q.answer)
    assert missed <= 0.02 * n, f"{missed} questions fell back to an answer other than the drawn one"
    return out


@pytest.mark.parametrize(
    "family,n",
    [
        ("presence", 300),
        ("location", 300),
        ("zone", 150),
        ("level", 120),
        ("size", 120),
        ("view", 120),
        ("count", 120),
        ("type", 150),
    ],
)
def test_answers_are_balanced_within_family(family, n):
    answers = _family_answers(family, n)
    space = vqa.ANSWERS[family]
    counts = np.array([answers.count(a) for a in space])
    assert counts.sum() == n
    expected = n / len(space)
    sigma = np.sqrt(n * (1 / len(space)) * (1 - 1 / len(space)))
    assert np.all(np.abs(counts - expected) < 4 * sigma), dict(zip(space, counts))


def test_change_answers_balanced():
    answers = _family_answers("change", 150, with_prior=True)
    counts = np.array([answers.count(a) for a in vqa.ANSWERS["change"]])
    assert counts.sum() == 150 and counts.min() > 150 / 5 - 4 * np.sqrt(150 * 0.16), counts


def test_unbalanced_sampling_would_be_skewed():
    """The balance test can fail: natural presence answers (no rejection) are far from uniform."""
    answers = []
    for i in range(200):
        plan = S.plan_study(0, i, CFG)
        qs = vqa.instantiate("presence", vqa.Facts(plan.findings, plan.view))
        answers.append(vqa.choose_question(qs, None, np.random.default_rng(i)).answer)
    assert answers.count("no") > 0.75 * len(answers)


# ---------------------------------------------------------------------------------------------- splits


def test_splits_are_disjoint_index_ranges():
    ranges = [(C.global_index(s, 0, CFG), C.global_index(s, CFG.split_size(s) - 1, CFG)) for s in C.SPLITS]
    for k, (a0, a1) in enumerate(ranges):
        assert C.split_of(a0) == C.split_of(a1) == C.SPLITS[k]
        for b0, b1 in ranges[k + 1 :]:
            assert a1 < b0 or b1 < a0
    with pytest.raises(IndexError):
        C.global_index("val", CFG.val_size, CFG)
    with pytest.raises(ValueError, match="unknown split"):
        C.global_index("dev", 0, CFG)
    images = {s: D.study(s, 0, CFG).image.tobytes() for s in C.SPLITS}
    assert len(set(images.values())) == len(C.SPLITS)
    assert D.examples("test", 2, CFG).split == "test"


def test_heldout_combination_never_in_train_always_in_heldout():
    name, side, zone = CFG.heldout
    for split in ("train", "val", "test"):
        for i in range(600 if split == "train" else 100):
            for variant in (0, 1):
                plan = S.plan_study(CFG.seed, C.global_index(split, i, CFG), CFG, variant=variant, with_prior=True)
                for spec in plan.findings + plan.resolved:
                    assert (spec.name, spec.side, spec.zone) != (name, side, zone), (split, i)
    for i in range(20):  # rendered zones agree (zone from the mask centroid)
        for f in D.study("train", i, _only(name)).findings:
            assert (f.side, f.zone) != (side, zone)
    for i in range(6):
        s = D.study("heldout", i, CFG)
        assert any((f.name, f.side, f.zone) == (name, side, zone) for f in s.findings)


def test_heldout_is_configurable():
    cfg = SyntheticConfig(heldout=("Consolidation", "right", "lower"))
    for i in range(400):
        plan = S.plan_study(cfg.seed, C.global_index("train", i, cfg), cfg)
        assert not any((f.name, f.side, f.zone) == cfg.heldout for f in plan.findings)
    for i in range(3):
        plan = S.plan_study(cfg.seed, C.global_index("heldout", i, cfg), cfg)
        assert any((f.name, f.side, f.zone) == cfg.heldout for f in plan.findings)
    with pytest.raises(ValueError, match="SyntheticConfig.heldout"):
        SyntheticConfig(heldout=("Cardiomegaly", "left", "upper"))


# ------------------------------------------------------------------------------------------- examples


def test_examples_follow_the_schema_and_programs_reproduce_answers():
    for task in ("findings", "impression", "vqa", "difference", "grounding", "referring", "classification"):
        for i in range(4):
            ex = D.examples("train", i, CFG, task=task)
            assert isinstance(ex, Example) and ex.task == task and ex.dataset == "synthetic"
            assert len(ex.images) == (2 if task == "difference" else 1)
            for img, (w, h) in zip(ex.images, ex.image_sizes):
                assert img.dtype == np.float32 and img.shape == (h, w) == (128, 128)
                assert img.min() >= 0.0 and img.max() <= 1.0
            assert ex.labels.shape == (14,)
            for b in ex.boxes:
                assert 0 <= b.x_min < b.x_max <= 128 and 0 <= b.y_min < b.y_max <= 128
            if task in ("vqa", "difference"):
                assert ex.question_type and "program" in ex.meta
                s = D.sample(
                    CFG.seed,
                    ex.meta["study_index"],
                    CFG,
                    variant=ex.meta["variant"],
                    with_prior=True if task == "difference" else None,
                )
                assert vqa.execute(ex.meta["program"], s.facts()) == ex.target
                if ex.question_type != "abnormality":
                    assert len(ex.target.split()) <= 2 or ex.meta["family"] == "describe_changes"


def _reference_answer(family: str, program, s) -> str | None:
    """Plain-Python answers from the rendered findings for the families with a one-line definition."""
    args = dict(program)
    group = [f for f in s.findings if f.name == args.get("filter_name")]
    sides = {side for f in group for side in (("left", "right") if f.side == "bilateral" else (f.side,))}
    return {
        "presence": "yes" if group else "no",
        "location": ("bilateral" if len(sides) == 2 else next(iter(sides), None)),
        "zone": next((f.zone for f in group if f.side == args.get("filter_side")), None),
        "view": s.view,
        "count": str(len({f.name for f in s.findings})),
        "type": next((f.kind for f in group), None),
        "change": dict(s.changes).get(args.get("filter_name")),
    }.get(family)


def test_vqa_answers_match_plain_reference():
    checked = 0
    for i in range(60):
        for task in ("vqa", "difference"):
            ex = D.examples("train", i, CFG, task=task)
            s = D.sample(
                CFG.seed,
                ex.meta["study_index"],
                CFG,
                variant=ex.meta["variant"],
                with_prior=True if task == "difference" else None,
            )
            ref = _reference_answer(ex.meta["family"], ex.meta["program"], s)
            if ref is not None:
                assert ex.target == ref, (ex.prompt, ex.target, ref)
                checked += 1
    assert checked > 50


def test_task_mix_and_source():
    src = D.SyntheticSource("val", SyntheticConfig(val_size=40))
    tasks = [src[i].task for i in range(40)]
    assert len(src) == 40 and len(set(tasks)) >= 5
    with pytest.raises(ValueError, match="task_mix"):
        SyntheticConfig(task_mix=(("captioning", 1.0),))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="SyntheticConfig.image_size"):
        SyntheticConfig(image_size=32)
    with pytest.raises(ValueError, match="SyntheticConfig.difficulty"):
        SyntheticConfig(difficulty=1.5)


def test_test_split_has_the_stratified_evaluation_mix():
    """600 test indices hold exactly 216 grounding, 312 VQA-type and 72 report prompts; other splits keep
    drawing from task_mix, and test_task_mix=None restores the random draw in the test split."""
    cfg = SyntheticConfig()
    cycle = cfg.task_cycle()
    counts = Counter(cycle[i % len(cycle)] for i in range(600))
    assert counts["grounding"] == 216 and counts["vqa"] + counts["classification"] == 312
    assert counts["findings"] + counts["impression"] == 72
    assert [D.examples("test", i, cfg).task for i in range(6)] == list(cycle[:6])
    plain = SyntheticConfig(test_task_mix=None)
    rng_tasks = [D.examples("test", i, plain).task for i in range(6)]
    assert [D.examples("val", i, cfg).task for i in range(6)] == [D.examples("val", i, plain).task for i in range(6)]
    assert rng_tasks != list(cycle[:6])
    with pytest.raises(ValueError, match="test_task_mix"):
        SyntheticConfig(test_task_mix=(("captioning", 1.0),))


def test_vqa_family_weights_shift_the_question_mix():
    """Weighting the presence family up makes most VQA rows presence questions, answered yes and no alike;
    the default (empty) keeps the original uniform draw."""
    heavy = SyntheticConfig(vqa_family_weights=(("presence", 50.0),))
    rows = [D.examples("train", i, heavy, task="vqa") for i in range(40)]
    presence = [e for e in rows if e.meta["family"] == "presence"]
    assert len(presence) >= 30 and {e.target for e in presence} == {"yes", "no"}
    plain = [D.examples("train", i, CFG, task="vqa").meta["family"] for i in range(40)]
    assert sum(f == "presence" for f in plain) < 15
    with pytest.raises(ValueError, match="vqa_family_weights"):
        SyntheticConfig(vqa_family_weights=(("presence", -1.0),))


def test_grounding_prompts_leave_side_and_zone_to_the_image():
    """Default prompts name the finding only and box every instance of it (both sides of a bilateral effusion);
    grounding_locations=True names side and zone (the older, guessable benchmark)."""
    located_cfg = dataclasses.replace(CFG, grounding_locations=True)
    multi_side = located_zone = 0
    for i in range(80):
        ex = D.examples("train", i, CFG, task="grounding")
        phrase = ex.boxes[0].label
        if phrase in ("heart", "right lung", "left lung"):
            continue
        assert not re.search(r"\b(right|left|upper|middle|lower|zone|bilateral)\b", ex.prompt), ex.prompt
        same = [
            f for f in ex.meta["findings"] if (KIND_PHRASES[f["kind"]] if f["kind"] else PHRASES[f["name"]]) == phrase
        ]
        assert [tuple(int(v) for v in b.as_tuple()) for b in ex.boxes] == [tuple(f["bbox"]) for f in same]
        multi_side += len({f["side"] for f in same}) > 1
        located = D.examples("train", i, located_cfg, task="grounding")
        located_zone += " zone" in located.prompt
    assert multi_side >= 1 and located_zone >= 5, (multi_side, located_zone)
