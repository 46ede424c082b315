"""Synthetic CXR benchmark: determinism, laterality, tight boxes, report/label consistency, balanced answers,
splits and the held-out combination, reasoning-trace format, schema, difficulty knob, render speed.

References are independent of the generator: a plain keyword CheXpert labeler written here, boxes recomputed
from masks with argwhere, a re-render without each lesion to locate the pixels it changed, and a regex /
brace-matching parser for the trace format.
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
import pytest

from data_pipelines.schema import CHEXPERT_LABELS, Example
from data_pipelines.synthetic import config as C
from data_pipelines.synthetic import dataset as D
from data_pipelines.synthetic import scene as S
from data_pipelines.synthetic import vqa
from data_pipelines.synthetic.config import SyntheticConfig

CFG = SyntheticConfig()
SIDE_NAMES = (
    "Lung Lesion",
    "Consolidation",
    "Pneumonia",
    "Lung Opacity",
    "Atelectasis",
    "Pleural Effusion",
    "Pneumothorax",
    "Fracture",
    "Pleural Other",
)


@pytest.fixture(scope="module")
def train_studies():
    return [D.study("train", i, CFG) for i in range(40)]


def _only(name: str, **kw) -> SyntheticConfig:
    return SyntheticConfig(p_normal=0.0, max_finding_types=1, finding_weights=((name, 1e9),), **kw)


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_index_gives_identical_bytes_and_text():
    for i in (0, 3, 11):
        a, b = D.study("train", i, CFG), D.study("train", i, CFG)
        assert a.image.tobytes() == b.image.tobytes()
        assert (a.findings_text, a.impression_text) == (b.findings_text, b.impression_text)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert [f.bbox for f in a.findings] == [f.bbox for f in b.findings]
    for task in ("vqa", "difference", "grounding"):
        e1, e2 = D.examples("val", 5, CFG, task=task), D.examples("val", 5, CFG, task=task)
        assert (e1.prompt, e1.target, e1.meta["reasoning"]) == (e2.prompt, e2.target, e2.meta["reasoning"])
        assert all(x.tobytes() == y.tobytes() for x, y in zip(e1.images, e2.images))


def test_different_indices_and_seeds_differ():
    images = [D.study("train", i, CFG).image.tobytes() for i in range(6)]
    assert len(set(images)) == len(images)
    other = D.study("train", 0, dataclasses.replace(CFG, seed=1)).image.tobytes()
    assert other != images[0]


def test_prior_does_not_change_the_current_study():
    a = D.sample(0, 7, CFG, with_prior=False)
    b = D.sample(0, 7, CFG, with_prior=True)
    assert b.prior is not None and a.prior is None
    assert a.image.tobytes() == b.image.tobytes()
    assert [f.bbox for f in a.findings] == [f.bbox for f in b.findings]


# -------------------------------------------------------------------------------------------- laterality


def test_laterality_patient_right_is_image_left():
    cfg = _only("Pleural Effusion")
    seen = set()
    for i in range(16):
        s = D.study("train", i, cfg)
        w = s.image_size[0]
        heart = s.anatomy_boxes["heart"]
        assert (heart[0] + heart[2]) / 2 > w / 2  # the heart sits mostly on the patient's left = image right
        for f in s.findings:
            cx = (f.bbox[0] + f.bbox[2]) / 2
            assert (cx < w / 2) == (f.side == "right"), (f.side, f.bbox)
            seen.add(f.side)
        sides = {f.side for f in s.findings}
        text = s.findings_text.lower()
        expect = "bilateral" if sides == {"left", "right"} else sides.pop()
        assert re.search(rf"\b{expect}\b[^.]*effusion", text), text  # text names the patient side
    assert seen == {"left", "right"}
    for i in range(12):  # the pixels agree: in normal studies the heart brightens the image just right of midline
        s = D.study("train", i, SyntheticConfig(p_normal=1.0))
        heart, w = s.anatomy_boxes["heart"], s.image_size[0]
        rows = slice(heart[1] + 4, heart[3] - 4)
        assert s.image[rows, w // 2 + 4 : w // 2 + 20].mean() > s.image[rows, w // 2 - 20 : w // 2 - 4].mean() + 0.03


def test_laterality_of_every_lateral_finding(train_studies):
    for s in train_studies:
        w = s.image_size[0]
        for f, mask in zip(s.findings, s.masks):
            if f.name in SIDE_NAMES and f.side in ("left", "right"):
                cols = np.argwhere(mask)[:, 1] + 0.5
                assert (cols.mean() < w / 2) == (f.side == "right"), (f.name, f.side, f.bbox)


# ----------------------------------------------------------------------------------------------- boxes


def _reference_box(mask):
    pts = np.argwhere(mask)
    (y0, x0), (y1, x1) = pts.min(0), pts.max(0)
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def _dilate(mask, r=1):
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def test_boxes_are_tight_to_masks_and_large_enough(train_studies):
    count = 0
    for s in train_studies:
        for study in (s, s.prior) if s.prior is not None else (s,):
            for f, mask in zip(study.findings, study.masks):
                assert f.bbox == _reference_box(mask)
                x0, y0, x1, y1 = f.bbox
                assert 0 <= x0 < x1 <= study.image_size[0] and 0 <= y0 < y1 <= study.image_size[1]
                if study is s:  # boxes of the current study are >= 8 px at 128^2
                    assert min(x1 - x0, y1 - y0) >= CFG.min_box, (f.name, f.bbox)
                count += 1
    assert count > 40


def test_lesion_pixels_lie_inside_its_mask():
    """Re-render each scene without one finding: the pixels that change are inside that finding's mask
    (dilated by the 3x3 display blur) and some do change."""
    changed_somewhere = 0
    for i in range(12):
        scene = S.realize(S.plan_study(CFG.seed, C.global_index("train", i, CFG), CFG), CFG)
        full = S.render_scene(scene, CFG)
        for k, spec in enumerate(scene.findings):
            without = dataclasses.replace(scene, findings=scene.findings[:k] + scene.findings[k + 1 :])
            diff = np.abs(S.render_scene(without, CFG).image - full.image) > 1e-6
            assert not np.any(diff & ~_dilate(full.masks[k])), spec.name
            if spec.name not in ("Cardiomegaly", "Enlarged Cardiomediastinum"):  # anatomy-only findings
                assert diff.any(), spec.name
                changed_somewhere += 1
    assert changed_somewhere > 5


def test_cardiomegaly_matches_ctr(train_studies):
    for s in train_studies:
        has = any(f.name == "Cardiomegaly" for f in s.findings)
        assert (s.ctr >= 0.55) if has else (s.ctr <= 0.52), (s.ctr, has)


def test_other_sizes_scale_boxes():
    for size in (64, 256):
        cfg = SyntheticConfig(image_size=size)
        s = D.study("train", 1, cfg)
        assert s.image.shape == (size, size) and s.image.dtype == np.float32
        for f in s.findings:
            assert min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1]) >= cfg.min_box


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


# --------------------------------------------------------------------------------------------- reasoning

_TRACE = re.compile(r"<think>(?P<think>.+)</think>\nThe answer is: \\boxed\{(?P<answer>.*)\}\Z", re.S)
_BOX = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_reasoning_traces_parse_and_box_the_target():
    for task in ("findings", "impression", "vqa", "difference", "grounding", "referring", "classification"):
        for i in range(6):
            ex = D.examples("train", i, CFG, task=task)
            m = _TRACE.match(ex.meta["reasoning"])
            assert m, ex.meta["reasoning"]
            assert m.group("answer") == ex.target
            steps = m.group("think").split("; ")
            assert [s.split(". ", 1)[0] for s in steps] == [str(k) for k in range(1, len(steps) + 1)]
            boxes = [tuple(map(int, b)) for b in _BOX.findall(m.group("think"))]
            assert boxes, ex.meta["reasoning"]
            w, h = ex.image_sizes[-1]
            assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in boxes)
            if task == "grounding":
                assert [tuple(map(int, b)) for b in _BOX.findall(ex.target)] == [
                    tuple(int(v) for v in b.as_tuple()) for b in ex.boxes
                ]
            negatives = ex.meta["reasoning_negatives"]
            shifted = _TRACE.match(negatives["shifted_box"])
            shifted_boxes = [tuple(map(int, b)) for b in _BOX.findall(shifted.group("think"))]
            assert all(_iou(a, b) == 0 for a, b in zip(boxes, shifted_boxes))
            if "wrong_side" in negatives:
                assert negatives["wrong_side"] != ex.meta["reasoning"]


def test_trace_steps_rerender_in_another_box_frame():
    from data_pipelines import boxes as B
    from data_pipelines.synthetic.reasoning import Step, render_trace

    ex = D.examples("train", 1, CFG, task="grounding")
    steps = [Step(text, boxes) for text, boxes in ex.meta["reasoning_steps"]]
    assert render_trace(steps, ex.target) == ex.meta["reasoning"]
    size = ex.image_sizes[-1]
    resized = render_trace(steps, ex.target, box_format=lambda b: B.format_box_text(B.xyxy_to_qwen(b, size)))
    scale = B.qwen_input_size(size)[0] / size[0]
    think = _TRACE.match(ex.meta["reasoning"]).group("think")
    think_resized = _TRACE.match(resized).group("think")
    pairs = list(zip(_BOX.findall(think), _BOX.findall(think_resized)))
    assert pairs and all(abs(int(v) * scale - int(w)) <= 0.5 for a, b in pairs for v, w in zip(a, b))


def test_wrong_side_negative_flips_side_answers():
    found = 0
    for i in range(40):
        ex = D.examples("train", i, CFG, task="vqa")
        if ex.meta.get("family") == "location" and ex.target in ("left", "right"):
            m = _TRACE.match(ex.meta["reasoning_negatives"]["wrong_side"])
            assert m.group("answer") == {"left": "right", "right": "left"}[ex.target]
            found += 1
    assert found > 0


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


def test_difficulty_lowers_lesion_contrast():
    def contrast(difficulty):
        cfg = _only("Lung Lesion", difficulty=difficulty)
        scene = S.realize(S.plan_study(0, 3, cfg), cfg)
        out = S.render_scene(scene, cfg)
        bare = S.render_scene(dataclasses.replace(scene, findings=()), cfg)
        return float(np.mean([np.abs(out.image - bare.image)[m].mean() for m in out.masks]))

    assert contrast(0.0) > 1.5 * contrast(1.0)


def test_contact_sheet_writes_png(tmp_path, train_studies):
    from data_pipelines.synthetic.preview import contact_sheet

    sheet = contact_sheet(train_studies[:8], str(tmp_path / "sheet.png"))
    assert sheet.shape == (2 * 256, 4 * 256, 3) and (tmp_path / "sheet.png").stat().st_size > 1000


def test_render_speed_is_measured():
    cfg = SyntheticConfig()
    scenes = [S.realize(S.plan_study(0, i, cfg, with_prior=False), cfg) for i in range(60)]
    S.render_scene(scenes[0], cfg)  # warm caches (vessel atlases)
    t0 = time.perf_counter()
    for sc in scenes:
        S.render_scene(sc, cfg)
    render_ms = (time.perf_counter() - t0) / len(scenes) * 1e3
    t0 = time.perf_counter()
    for i in range(30):
        D.sample(0, i, cfg)
    sample_ms = (time.perf_counter() - t0) / 30 * 1e3
    print(
        f"\nrender_scene 128^2: {render_ms:.2f} ms/image; sample() incl. plan, geometry, report, priors: "
        f"{sample_ms:.2f} ms/study"
    )


def test_test_split_has_the_stratified_evaluation_mix():
    """600 test indices hold exactly 216 grounding, 312 VQA-type and 72 report prompts; other splits keep
    drawing from task_mix, and test_task_mix=None restores the random draw in the test split."""
    from collections import Counter

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
    from data_pipelines.synthetic.findings import KIND_PHRASES, PHRASES

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


def test_grounding_trace_names_the_asked_phrase_first_and_its_boxes_are_the_answer():
    """A phrase-first grounding trace starts from the phrase the prompt asks about and cites exactly the
    answer's boxes, in order, the last one right before the answer (no anatomy step), so the answer is a copy;
    the default (anatomy-first) trace opens on both lungs' boxes."""
    from data_pipelines.synthetic.reasoning import parse_trace

    seen = 0
    for i in range(80):
        e = D.examples("train", i, SyntheticConfig(grounding_trace="phrase_first"), task="grounding")
        cited, boxed = parse_trace(e.meta["reasoning"])
        answer = [tuple(int(v) for v in m.groups()) for m in re.finditer(r"\[(\d+), (\d+), (\d+), (\d+)\]", boxed)]
        assert cited == answer, e.meta["reasoning"]
        phrase = e.meta["reasoning_steps"][0][0].split(" is ")[0]
        assert e.meta["reasoning"].startswith(f"<think>1. {phrase} is") and phrase.removeprefix("the ") in e.prompt
        seen += bool(e.meta["findings"])
    assert seen > 40
    default = D.examples("train", 0, SyntheticConfig(), task="grounding").meta["reasoning"]
    assert default.startswith("<think>1. inspect the right lung [") and "matches the" in default


def test_box_first_grounding_trace_gives_each_box_right_after_the_phrase_and_the_answer_copies_them():
    from data_pipelines.synthetic.reasoning import parse_trace

    for i in range(40):
        e = D.examples("train", i, SyntheticConfig(grounding_trace="box_first"), task="grounding")
        cited, boxed = parse_trace(e.meta["reasoning"])
        answer = [tuple(int(v) for v in m.groups()) for m in re.finditer(r"\[(\d+), (\d+), (\d+), (\d+)\]", boxed)]
        assert cited == answer, e.meta["reasoning"]
        if e.meta["findings"]:
            assert re.match(r"<think>1\. the [a-z ]+ lies at \[\d+, \d+, \d+, \d+\] and shows ", e.meta["reasoning"])


def test_question_first_vqa_trace_names_the_asked_finding_first_and_keeps_the_evidence():
    """Every family: the evidence steps of the default style, in the same order (view reversed), after a short
    first step that names the asked finding (or the survey's purpose); the answer is unchanged."""
    qf = SyntheticConfig(vqa_trace="question_first")
    families = set()
    for i in range(120):
        a, b = D.examples("train", i, SyntheticConfig(), task="vqa"), D.examples("train", i, qf, task="vqa")
        assert a.prompt == b.prompt and a.target == b.target
        fam, old, new = b.meta["family"], a.meta["reasoning_steps"], b.meta["reasoning_steps"]
        families.add(fam)
        name = dict(b.meta["program"]).get("filter_name")
        if fam == "view":
            assert new == old[::-1] and "projection" in new[0][0]
        elif fam in ("count", "abnormality"):
            verb = "count" if fam == "count" else "list"
            assert new[0] == (f"{verb} the abnormal findings", ()) and new[1:] == old[1:]
        else:
            from data_pipelines.synthetic.vqa import name_phrase

            assert new[0] == (f"look for the {name_phrase(name)}", ())
            assert new[1:] == (old[1:] if fam == "presence" else old)
    assert families >= {"presence", "location", "zone", "level", "size", "view", "count", "abnormality", "type"}
    with pytest.raises(ValueError, match="vqa_trace"):
        SyntheticConfig(vqa_trace="answer_first")


def test_trace_box_jitter_moves_the_cited_boxes_and_the_trace_answer_copies_them():
    """With trace_box_jitter the grounding trace cites boxes moved by at most that many pixels per edge and its
    boxed answer is exactly those boxes (a copy, not the truth), while the example's target stays the truth."""
    from data_pipelines.synthetic.reasoning import parse_trace

    cfg = SyntheticConfig(grounding_trace="box_first", trace_box_jitter=3)
    moved = 0
    for i in range(40):
        e, plain = (
            D.examples("train", i, c, task="grounding") for c in (cfg, dataclasses.replace(cfg, trace_box_jitter=0))
        )
        assert e.target == plain.target and e.prompt == plain.prompt
        cited, boxed = parse_trace(e.meta["reasoning"])
        truth, _ = parse_trace(plain.meta["reasoning"])
        answer = [tuple(int(v) for v in m.groups()) for m in re.finditer(r"\[(\d+), (\d+), (\d+), (\d+)\]", boxed)]
        assert cited == answer and len(cited) == len(truth)
        for c, t in zip(cited, truth):
            assert max(abs(a - b) for a, b in zip(c, t)) <= 3 and c[0] < c[2] and c[1] < c[3]
        moved += cited != truth
    assert moved > 30
    with pytest.raises(ValueError, match="trace_box_jitter"):
        SyntheticConfig(trace_box_jitter=-1)
