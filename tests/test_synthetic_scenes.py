"""Synthetic CXR scenes: determinism, laterality, boxes tight to the lesion masks, the difficulty knob, the
contact sheet and render speed.

References are independent of the generator: boxes recomputed from masks with argwhere, and a re-render
without each lesion to locate the pixels it changed.
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
import pytest
from helpers.synthetic_configs import CFG
from helpers.synthetic_configs import only_finding as _only

from data_pipelines.synthetic import config as C
from data_pipelines.synthetic import dataset as D
from data_pipelines.synthetic import scene as S
from data_pipelines.synthetic.config import SyntheticConfig
from data_pipelines.synthetic.preview import contact_sheet

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


# ------------------------------------------------------------------------------------ difficulty, speed


def test_difficulty_lowers_lesion_contrast():
    def contrast(difficulty):
        cfg = _only("Lung Lesion", difficulty=difficulty)
        scene = S.realize(S.plan_study(0, 3, cfg), cfg)
        out = S.render_scene(scene, cfg)
        bare = S.render_scene(dataclasses.replace(scene, findings=()), cfg)
        return float(np.mean([np.abs(out.image - bare.image)[m].mean() for m in out.masks]))

    assert contrast(0.0) > 1.5 * contrast(1.0)


def test_contact_sheet_writes_png(tmp_path, train_studies):
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
