"""Arena protocol: both presentation orders, consistency rule, position-bias stats, judges combined, JSONL input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dmx_jax.eval.arena import JudgeResponse, Report, RubricJudge, load_reports_jsonl, run_arena
from dmx_jax.eval.arena.__main__ import main


class ScriptedJudge:
    """Answers from a function of (reference text, first report, second report); counts its calls."""

    def __init__(self, judge_id, answer):
        self.judge_id, self.label, self.answer, self.calls = judge_id, f"scripted {judge_id}", answer, 0

    def prompt_hash(self, request):
        return f"{request.reference.text}|{request.report_a.text}|{request.report_b.text}"

    def judge(self, requests):
        self.calls += len(requests)
        return [JudgeResponse(self.answer(r.reference.text, r.report_a.text, r.report_b.text), "raw") for r in requests]


def quality(text):  # systems are named by their quality in these tests
    return {"best": 3, "mid": 2, "worst": 1}[text]


def prefer_better(ref, a, b):
    return "TIE" if quality(a) == quality(b) else ("A" if quality(a) > quality(b) else "B")


SYSTEMS = {name: {f"s{k}": Report(name) for k in range(8)} for name in ("best", "mid", "worst")}
REFS = {f"s{k}": Report("reference") for k in range(8)}


def test_both_orders_are_asked_and_a_consistent_judge_ranks_correctly():
    judge = ScriptedJudge("fair", prefer_better)
    out = run_arena(REFS, SYSTEMS, [judge], n_bootstrap=50)
    assert judge.calls == 8 * 3 * 2  # studies x pairs x orders
    bias = out["judges"][0]["position_bias"]
    assert bias["consistent"] == 24 and bias["inconsistent"] == 0 and bias["first_position_win_rate"] == 0.5
    assert out["combined"]["ranking"] == ["best", "mid", "worst"]
    names = out["systems"]
    wr = np.array(out["combined"]["win_rate"])
    assert wr[names.index("best"), names.index("worst")] == 1.0


def test_position_biased_judge_gives_ties_and_is_reported():
    judge = ScriptedJudge("always-first", lambda ref, a, b: "A")
    out = run_arena(REFS, SYSTEMS, [judge], n_bootstrap=50)
    bias = out["judges"][0]["position_bias"]
    assert bias["inconsistent"] == 24 and bias["inconsistent_rate"] == 1.0
    assert bias["first_position_win_rate"] == 1.0 and bias["first"] == 48
    wr = np.array(out["combined"]["win_rate"])
    assert np.all(wr[~np.eye(3, dtype=bool)] == 0.5)  # every pair a tie
    ratings = out["combined"]["ratings"]
    assert max(abs(r["bt"]) for r in ratings.values()) < 1e-9


def test_win_in_one_order_and_tie_in_the_other_is_a_tie():
    def half(ref, a, b):  # only says "best" wins when it is shown first
        return "A" if a == "best" else "TIE"

    out = run_arena(REFS, {k: SYSTEMS[k] for k in ("best", "mid")}, [ScriptedJudge("half", half)], n_bootstrap=20)
    assert out["judges"][0]["position_bias"]["inconsistent"] == 8
    assert out["combined"]["win_rate"][0][1] == 0.5


def test_judges_are_combined_and_rated_separately():
    fair = ScriptedJudge("fair", prefer_better)
    flip = {"A": "B", "B": "A", "TIE": "TIE"}
    contrarian = ScriptedJudge("contrarian", lambda ref, a, b: flip[prefer_better(ref, a, b)])
    flaky = ScriptedJudge("flaky", lambda ref, a, b: None)  # never parseable
    out = run_arena(REFS, SYSTEMS, [fair, fair, contrarian, flaky], n_bootstrap=50)
    assert out["per_judge"]["fair"]["ranking"] == ["best", "mid", "worst"]
    assert out["per_judge"]["contrarian"]["ranking"] == ["worst", "mid", "best"]
    assert out["per_judge"]["flaky"] == {"n_comparisons": 0}
    flaky_bias = out["judges"][3]["position_bias"]
    assert flaky_bias["unparseable"] == 48 and flaky_bias["left_out"] == 24
    assert out["combined"]["n_comparisons"] == 3 * 24 and out["combined"]["ranking"][0] == "best"  # 2 fair vs 1
    assert "half a win" in out["method"]
    json.dumps(out)  # JSON-ready


def test_studies_missing_for_a_system_are_compared_among_the_others():
    systems = {"best": SYSTEMS["best"], "mid": SYSTEMS["mid"], "worst": {"s0": Report("worst")}}
    judge = ScriptedJudge("fair", prefer_better)
    run_arena(REFS, systems, [judge], n_bootstrap=20)
    assert judge.calls == 2 * (8 + 2)  # best-mid on 8 studies, plus the two pairs with worst on s0
    with pytest.raises(ValueError, match=">= 2 systems"):
        run_arena(REFS, {"best": SYSTEMS["best"]}, [judge])


def test_load_reports_jsonl(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(
        '{"study_id": "a", "report": "No effusion.", "boxes": [[1, 2, 3, 4]]}\n\n'
        '{"study_id": "b", "report": "Cardiomegaly."}\n'
    )
    reports = load_reports_jsonl(path)
    assert reports == {"a": Report("No effusion.", ((1.0, 2.0, 3.0, 4.0),)), "b": Report("Cardiomegaly.")}
    for bad, message in [
        ('{"study_id": "a"}', "field 'report'"),
        ("not json", "invalid JSON"),
        ('{"study_id": "a", "report": "x", "boxes": [[1, 2]]}', "4 numbers"),
        ('{"study_id": "a", "report": "x"}\n{"study_id": "a", "report": "y"}', "duplicate"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message) as e:
            load_reports_jsonl(path)
        assert "gen.jsonl:" in str(e.value)


def test_rubric_arena_on_generated_reports_end_to_end(tmp_path):
    refs = {
        "s1": Report("Small left pleural effusion."),
        "s2": Report("Moderate cardiomegaly. No pneumothorax."),
        "s3": Report("Right lower lobe consolidation concerning for pneumonia."),
    }
    systems = {
        "copy": dict(refs),
        "generic": {s: Report("No acute cardiopulmonary process.") for s in refs},
        "wrong": {
            "s1": Report("Small right pleural effusion."),
            "s2": Report("Large right pneumothorax."),
            "s3": Report("Left lower lobe atelectasis."),
        },
    }
    rubric = RubricJudge()
    out = run_arena(refs, systems, [rubric], cache=tmp_path, n_bootstrap=100)
    assert out["combined"]["ranking"][0] == "copy"
    lo, hi = out["combined"]["ratings"]["copy"]["bt_ci"]
    assert lo <= out["combined"]["ratings"]["copy"]["bt"] <= hi


def test_command_line_runs_the_rubric_arena(tmp_path, capsys):
    rows = {
        "ref": ["Small left pleural effusion.", "Mild cardiomegaly."],
        "good": ["Small left pleural effusion.", "Mild cardiomegaly."],
        "bad": ["Large right pneumothorax.", "No cardiomegaly."],
    }
    paths = {}
    for name, texts in rows.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        lines = [json.dumps({"study_id": f"s{i}", "report": t}) for i, t in enumerate(texts)]
        paths[name].write_text("\n".join(lines) + "\n")
    out = tmp_path / "arena.json"
    assert (
        main(
            [
                "--references",
                str(paths["ref"]),
                "--system",
                f"good={paths['good']}",
                "--system",
                f"bad={paths['bad']}",
                "--rubric",
                "--cache",
                str(tmp_path / "c"),
                "--bootstrap",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "offline rubric judge" in printed and printed.index("good") < printed.index("bad ")
    assert json.loads(out.read_text())["combined"]["ranking"] == ["good", "bad"]
