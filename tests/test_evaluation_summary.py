"""Run summary and evaluation controls: the Report Arena line states ratings with CIs and whether any stage
separated; the images-swapped control only swaps between rows with as many image tokens."""
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
    assert "some stages separate" in arena_line(_arena({"sft": (920, 960), "grpo": (1040, 1080)}))  # lower first


def test_images_swapped_only_between_rows_with_as_many_image_tokens():
    import numpy as np
    from experiments.evaluate import _rolled_images
    img = 7
    ids = np.array([[img, 1, 1], [img, img, 1], [img, 2, 2], [img, img, 3], [img, 4, 4]])
    arrays = {"input_ids": ids, "pixel_values": np.arange(5)[:, None] * np.ones((5, 2)),
              "vision_inputs": {"rot_hw": np.arange(5)[:, None]}}
    out = _rolled_images(arrays, np.arange(5), img)
    # one-image rows 0, 2, 4 cycle among themselves; two-image rows 1, 3 swap
    assert out["pixel_values"][:, 0].tolist() == [4, 3, 0, 1, 2]
    assert out["vision_inputs"]["rot_hw"][:, 0].tolist() == [4, 3, 0, 1, 2]
    assert (out["input_ids"] == ids).all()
