"""VQA scoring rules, grounding IoU / matching, and the bootstrap CI."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dmx_jax.eval import bootstrap_ci, grounding_scores, vqa_scores
from dmx_jax.eval.grounding import box_iou, greedy_match, grounding_sample_scores
from dmx_jax.eval.vqa import answer_kind, vqa_sample_score

coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")


# ---------------------------------------------------------------------------------------------------- VQA


def test_short_answers_exact_match_after_normalisation():
    assert vqa_sample_score("Yes.", "yes") == 1.0
    assert vqa_sample_score("  Left  lung ", "left lung") == 1.0
    assert vqa_sample_score("right", "left") == 0.0
    assert vqa_sample_score("yes, there is", "yes") == 0.0
    assert answer_kind("pleural effusion") == "short" and answer_kind("a | b") == "list"


def test_list_answers_item_f1():
    assert vqa_sample_score("effusion|atelectasis", "atelectasis | effusion") == 1.0
    assert vqa_sample_score("effusion | edema", "effusion | atelectasis") == pytest.approx(0.5)  # P=R=1/2
    precision, recall = 1.0, 1 / 3
    assert vqa_sample_score("effusion", "effusion | atelectasis | edema") == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    assert vqa_sample_score("nothing", "effusion | edema") == 0.0


def test_sentence_answers_mean_of_bleu1_and_rouge_l_as_pycocoevalcap():
    pairs = [
        ("There is a small left pleural effusion.", "Small left pleural effusion is seen."),
        ("The heart is normal in size", "Heart size is normal."),
        ("No.", "There is no pneumothorax."),
    ]
    for pred, ref in pairs:
        tok = lambda s: " ".join(s.lower().replace(".", " .").split())
        b, b_samples = coco_bleu.Bleu(1).compute_score({0: [tok(ref)]}, {0: [tok(pred)]}, verbose=0)
        r, _ = coco_rouge.Rouge().compute_score({0: [tok(ref)]}, {0: [tok(pred)]})
        assert vqa_sample_score(pred, ref) == pytest.approx((b_samples[0][0] + r) / 2, abs=1e-9)


def test_vqa_scores_grouping_and_rule():
    preds = ["yes", "no", "left", "a | b", "yes", "right"]
    refs = ["yes", "yes", "left", "a | c", "yes", "left"]
    ds = ["cxr-vqa", "cxr-vqa", "cxr-vqa", "ext-vqa", "ext-vqa", "ext-vqa"]
    qt = ["presence", "presence", "location", "abnormality", "presence", "location"]
    out = vqa_scores(preds, refs, datasets=ds, question_types=qt, n_bootstrap=200)
    per = np.array([1, 0, 1, 0.5, 1, 0])
    np.testing.assert_allclose(out["per_sample"], per)
    assert out["overall"]["mean"] == pytest.approx(per.mean()) and out["overall"]["n"] == 6
    assert out["by_dataset"]["cxr-vqa"]["by_question_type"]["presence"]["mean"] == pytest.approx(0.5)
    assert out["by_dataset"]["ext-vqa"]["all"]["mean"] == pytest.approx(0.5)
    assert out["by_kind"]["list"]["n"] == 1
    lo, hi = out["overall"]["ci"]
    assert lo <= per.mean() <= hi
    assert "exact match" in out["rule"] and "F1" in out["rule"]
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        vqa_scores(["a", "b"], ["a"])


# ---------------------------------------------------------------------------------------------- grounding


def _iou_plain(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _random_box(rng):
    x, y = rng.uniform(0, 400), rng.uniform(0, 400)
    return [x, y, x + rng.uniform(1, 150), y + rng.uniform(1, 150)]


def test_iou_matches_plain_formula_on_fuzzed_boxes():
    rng = random.Random(0)
    a = [_random_box(rng) for _ in range(30)]
    b = [_random_box(rng) for _ in range(20)]
    got = box_iou(np.array(a), np.array(b))
    want = np.array([[_iou_plain(p, q) for q in b] for p in a])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10]])[0, 0] == 1.0
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)


def test_greedy_matching_matches_iterative_argmax():
    rng = random.Random(1)
    for _ in range(50):
        k, m = rng.randint(1, 5), rng.randint(1, 5)
        iou = np.array([[rng.choice([0.0, rng.random()]) for _ in range(m)] for _ in range(k)])
        work, want = iou.copy(), []
        while work.size and work.max() > 0:  # reference: take the global argmax, strike its row and column
            i, j = np.unravel_index(np.argmax(work), work.shape)
            want.append((int(i), int(j), float(iou[i, j])))
            work[i, :] = -1
            work[:, j] = -1
        assert sorted(greedy_match(iou)) == sorted(want)


def test_grounding_sample_cases():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    perfect = grounding_sample_scores(gt, gt)
    assert perfect == {"top1_iou": 1.0, "acc_at_0_5": 1.0, "miou": 1.0, "f1_at_0_5": 1.0}
    one = grounding_sample_scores([[20, 20, 30, 30]], gt)  # finds the second box only
    assert one["top1_iou"] == 1.0 and one["acc_at_0_5"] == 1.0
    assert one["miou"] == pytest.approx(0.5) and one["f1_at_0_5"] == pytest.approx(2 / 3)
    half = grounding_sample_scores([[5, 0, 15, 10]], [[0, 0, 10, 10]])  # IoU 1/3
    assert half["acc_at_0_5"] == 0.0 and half["top1_iou"] == pytest.approx(1 / 3)
    extra = grounding_sample_scores([[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10]])
    assert extra["miou"] == pytest.approx(0.5) and extra["top1_iou"] == 1.0
    assert grounding_sample_scores([], gt)["miou"] == 0.0
    assert grounding_sample_scores([], [])["acc_at_0_5"] == 1.0
    with pytest.raises(ValueError, match=r"shape \[K, 4\]"):
        grounding_sample_scores([[1, 2, 3]], gt)


def test_grounding_scores_grouping():
    preds = [[[0, 0, 10, 10]], [[0, 0, 4, 10]], [[100, 100, 120, 120]]]
    refs = [[[0, 0, 10, 10]], [[0, 0, 10, 10]], [[100, 100, 110, 110]]]
    out = grounding_scores(
        preds, refs, datasets=["ms-cxr", "ms-cxr", "vindr"], groups=["Edema", "Edema", "Pneumothorax"], n_bootstrap=100
    )
    assert out["overall"]["acc_at_0_5"]["mean"] == pytest.approx(1 / 3)
    assert out["by_dataset"]["ms-cxr"]["top1_iou"]["Edema"]["mean"] == pytest.approx((1 + 0.4) / 2)
    assert out["by_dataset"]["vindr"]["miou"]["Pneumothorax"]["mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="sample 1"):
        grounding_scores([[], []], [[[0, 0, 1, 1]], [[5, 5, 1, 1]]])


# ---------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_normal_theory_width_and_is_seeded():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_ci(values, np.mean, n=2000, seed=1)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert lo < values.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.959964 * se, rel=0.1)
    assert bootstrap_ci(values, np.mean, n=300, seed=5) == bootstrap_ci(values, np.mean, n=300, seed=5)
    assert bootstrap_ci(values, np.mean, n=300, seed=5) != bootstrap_ci(values, np.mean, n=300, seed=6)
    generic = bootstrap_ci(values, lambda v: float(np.mean(v)), n=300, seed=5)  # loop path == vectorised path
    assert generic == pytest.approx(bootstrap_ci(values, np.mean, n=300, seed=5), abs=1e-12)


def test_bootstrap_resamples_paired_arrays_jointly():
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = x.copy()  # paired: every resample keeps x == y, so the difference statistic is exactly 0
    lo, hi = bootstrap_ci((x, y), lambda a, b: float(np.mean(a - b)), n=200, seed=0)
    assert lo == hi == 0.0
    lo, hi = bootstrap_ci((x, rng.permutation(y)), lambda a, b: float(np.corrcoef(a, b)[0, 1]), n=200, seed=0)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="share the leading axis"):
        bootstrap_ci((x, y[:10]), lambda a, b: 0.0)
