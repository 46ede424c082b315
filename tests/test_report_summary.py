"""The run summary's Report Arena line states ratings with CIs and whether any stage separated."""
from experiments.report import arena_line


def _arena(cis):
    ratings = {st: {"bt_elo_scale": (lo + hi) / 2, "bt_elo_scale_ci": [lo, hi]} for st, (lo, hi) in cis.items()}
    return {"n_studies": 40, "judges": [{"label": "offline rubric judge"}],
            "combined": {"n_comparisons": 120, "ranking": list(cis), "ratings": ratings}}


def test_arena_line_says_when_stages_separate():
    tied = arena_line(_arena({"grpo": (990, 1010), "sft": (985, 1005)}))
    assert "no stage separates" in tied and "grpo 1000 [990, 1010]" in tied and "40 studies, 120 pairs" in tied
    apart = arena_line(_arena({"grpo": (1040, 1080), "sft": (920, 960)}))
    assert "some stages separate" in apart and apart.index("grpo") < apart.index("sft")
