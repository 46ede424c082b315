"""The offline rubric judge grades partial agreement: systems whose report label F1 differs by >= 0.1 separate
in Report Arena with non-overlapping CIs, and only equivalent reports tie."""

from __future__ import annotations

import numpy as np

from dmx_jax.eval.arena import JudgeRequest, Report, RubricJudge, run_arena
from dmx_jax.eval.label_f1 import rule_chexpert_f1

# finding -> sentence template ({sev} severity word, {side} side); every phrase is one the labeler reads
PHRASES = {
    "Pleural Effusion": "{sev} {side} pleural effusion.",
    "Pneumothorax": "{sev} {side} pneumothorax.",
    "Consolidation": "{sev} {side} lower lobe consolidation.",
    "Atelectasis": "{sev} {side} basilar atelectasis.",
    "Lung Lesion": "{sev} {side} upper lobe nodule.",
    "Cardiomegaly": "{sev} cardiomegaly.",
    "Edema": "{sev} pulmonary edema.",
    "Fracture": "{sev} {side} rib fracture.",
}
SEVERITIES, SIDES = ("small", "moderate", "large"), ("left", "right")
NORMAL = "No acute cardiopulmonary process."


def write(findings: list[tuple[str, str, str]]) -> str:
    if not findings:
        return NORMAL
    return " ".join(PHRASES[n].format(sev=sev, side=side).capitalize() for n, sev, side in findings)


def studies(n: int, rng) -> list[list[tuple[str, str, str]]]:
    names = list(PHRASES)
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        picked = rng.choice(len(names), size=k, replace=False)
        out.append([(names[i], SEVERITIES[rng.integers(3)], SIDES[rng.integers(2)]) for i in picked])
    return out


def system(truth, recall: float, rng, false_rate: float = 0.2, flip: float = 0.2):
    """A system that states each true finding with probability `recall` (side / severity sometimes wrong)
    and adds a false finding with probability `false_rate`."""
    names = list(PHRASES)
    out = []
    for fs in truth:
        kept = []
        for name, sev, side in fs:
            if rng.random() < recall:
                side = SIDES[1 - SIDES.index(side)] if rng.random() < flip else side
                sev = SEVERITIES[rng.integers(3)] if rng.random() < flip else sev
                kept.append((name, sev, side))
        if rng.random() < false_rate:
            extra = names[rng.integers(len(names))]
            if extra not in {f[0] for f in kept}:
                kept.append((extra, SEVERITIES[rng.integers(3)], SIDES[rng.integers(2)]))
        out.append(kept)
    return out


def test_rubric_grades_partial_agreement_severity_and_negation():
    ref = Report("Large left pleural effusion. Small right pneumothorax. Moderate cardiomegaly.")
    rubric = RubricJudge()
    score = lambda text: rubric.components(Report(text), ref)["total"]
    full = score("Large left pleural effusion. Small right pneumothorax. Moderate cardiomegaly.")
    two = score("Large left pleural effusion. Small right pneumothorax.")
    one = score("Large left pleural effusion.")
    wrong_sev = score("Small left pleural effusion. Large right pneumothorax. Moderate cardiomegaly.")
    hedged = score("Possible large left pleural effusion. Small right pneumothorax. Moderate cardiomegaly.")
    negated = score("No pleural effusion. No pneumothorax. Normal heart size.")
    assert full == 1.0 and full > hedged > two > one > negated
    assert full > wrong_sev > one  # severity words count
    assert negated == score(NORMAL)  # negations are absences, not findings


def test_stages_differing_in_label_f1_separate_with_non_overlapping_cis(tmp_path):
    rng = np.random.default_rng(0)
    truth = studies(150, rng)
    outputs = {"good": system(truth, 0.85, rng), "fair": system(truth, 0.55, rng)}
    refs = {f"s{i}": Report(write(fs)) for i, fs in enumerate(truth)}
    systems = {name: {f"s{i}": Report(write(fs)) for i, fs in enumerate(out)} for name, out in outputs.items()}
    systems["good_copy"] = dict(systems["good"])
    f1 = {
        n: rule_chexpert_f1([systems[n][s].text for s in refs], [refs[s].text for s in refs])["micro_f1_14"]
        for n in outputs
    }
    assert f1["good"] - f1["fair"] >= 0.1, f1  # the premise of the test
    out = run_arena(refs, systems, [RubricJudge()], cache=tmp_path, n_bootstrap=200)
    r = out["combined"]["ratings"]
    assert r["fair"]["bt_ci"][1] < min(r["good"]["bt_ci"][0], r["good_copy"]["bt_ci"][0])
    assert r["fair"]["elo_ci"][1] < r["good"]["elo_ci"][0]
    # identical reports tie, so copies of one system are never separated and have equal ratings
    assert abs(r["good"]["bt"] - r["good_copy"]["bt"]) < 1e-6
    judge = RubricJudge()
    verdicts = judge.judge([JudgeRequest(s, refs[s], systems["good"][s], systems["fair"][s]) for s in refs])
    same = [
        judge.components(systems["good"][s], refs[s])["total"] == judge.components(systems["fair"][s], refs[s])["total"]
        for s in refs
    ]
    assert [v.verdict == "TIE" for v in verdicts] == same  # a tie only when the rubric scores are equal
    assert sum(same) < len(refs) / 2
