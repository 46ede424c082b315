"""bench.bench_ablation tables from evaluation files: per-seed stage rows with CIs and the mean over seeds,
paired stage differences, and the reward ablation (citing rate, IoU of cited boxes, paired grounded - paper)."""

from __future__ import annotations

import numpy as np

from bench.bench_ablation import reward_rows, stage_tables
from experiments.report import smoothed


def _eval(good_every: int, cite: bool = True) -> dict:
    recs = []
    for i in range(40):
        ok = i % good_every == 0
        recs.append(
            {
                "example_id": f"v{i}",
                "task": "vqa",
                "question_type": "presence",
                "output": "yes" if ok else "no",
                "answer": "yes" if ok else "no",
                "target": "yes",
                "boxes_true": [],
                "image_size": (64, 64),
            }
        )
        box = "[0, 0, 10, 10]" if ok else "[30, 30, 40, 40]"
        recs.append(
            {
                "example_id": f"g{i}",
                "task": "grounding",
                "question_type": "grounding",
                "output": f"<think>at {box}</think> \\boxed{{{box}}}" if cite else "none",
                "answer": box if cite else "",
                "target": "[0, 0, 10, 10]",
                "boxes_true": [[0.0, 0.0, 10.0, 10.0]],
                "image_size": (64, 64),
            }
        )
    frac = sum(i % good_every == 0 for i in range(40)) / 40
    metrics = {
        "vqa_score": {"mean": frac, "ci": [frac - 0.1, frac + 0.1], "n": 40},
        "grounding": {"miou": {"mean": frac if cite else 0.0, "ci": [0, 1], "n": 40}},
    }
    return {"metrics": metrics, "records": recs}


def test_stage_and_reward_tables():
    evals = {s: {"sft": _eval(4), "cold_start": _eval(2), "grpo": _eval(1)} for s in (0, 1)}
    header, rows, d_header, d_rows = stage_tables(evals)
    assert len(rows) == 2 * 3 + 3 and rows[-1][:2] == ["mean ± std", "grpo"] and rows[-1][2] == "1.000 ± 0.000"
    assert rows[0][:3] == [0, "sft", "0.250 [0.15, 0.35]"]
    grpo_sft = [r for r in d_rows if r[0] == 0 and r[1] == "grpo − sft"][0]
    assert grpo_sft[2].startswith("0.750 [") and grpo_sft[2].endswith(" *")
    r_header, r_rows, paired = reward_rows({0: {"grounded": _eval(1), "paper": _eval(2, cite=False)}})
    grounded, paper = r_rows[0], r_rows[1]
    assert grounded[5].startswith("0.500") and paper[5].startswith("0.000")  # VQA answers cite nothing here
    assert grounded[6].startswith("1.000") and paper[6] == "–"  # no cited boxes at all
    assert paired[0][3].startswith("1.000") and paired[0][3].endswith(" *")  # mIoU: grounded - paper


def test_smoothed_reward_curve_is_a_trailing_moving_average():
    rng = np.random.default_rng(0)
    v = rng.normal(size=23)
    for window in (1, 4, 6, 30):
        want = [np.mean(v[max(0, i + 1 - window) : i + 1]) for i in range(len(v))]
        np.testing.assert_allclose(smoothed(v, window), want, rtol=1e-12)
