"""Run summary and evaluation controls: the Report Arena line states ratings with CIs and whether any stage
separated; the images-swapped control only swaps between rows with as many image tokens."""

import jax.numpy as jnp
import numpy as np

from dmx_jax.eval.paired import paired_difference
from dmx_jax.training.loop import LoopConfig, LoopIO, MetricsWriter, train_loop
from dmx_jax.training.state import TrainState
from experiments.evaluate import (
    _rolled_images,
    citation_stats,
    example_scores,
    image_drop,
    image_drop_by_question_type,
    trace_box_copied,
)
from experiments.report import (
    arena_line,
    difference_table,
    question_type_table,
    read_metrics,
    skipped_line,
    stage_differences,
)


def _arena(cis):
    ratings = {st: {"bt_elo_scale": (lo + hi) / 2, "bt_elo_scale_ci": [lo, hi]} for st, (lo, hi) in cis.items()}
    return {
        "n_studies": 40,
        "judges": [{"label": "offline rubric judge"}],
        "combined": {"n_comparisons": 120, "ranking": list(cis), "ratings": ratings},
    }


def test_arena_line_says_when_stages_separate():
    tied = arena_line(_arena({"grpo": (990, 1010), "sft": (985, 1005)}))
    assert "no stage separates" in tied and "grpo 1000 [990, 1010]" in tied and "40 studies, 120 pairs" in tied
    apart = arena_line(_arena({"grpo": (1040, 1080), "sft": (920, 960)}))
    assert "some stages separate" in apart and apart.index("grpo") < apart.index("sft")
    assert "some stages separate" in arena_line(_arena({"sft": (920, 960), "grpo": (1040, 1080)}))  # lower first


def test_images_swapped_only_between_rows_with_as_many_image_tokens():
    img = 7
    ids = np.array([[img, 1, 1], [img, img, 1], [img, 2, 2], [img, img, 3], [img, 4, 4]])
    arrays = {
        "input_ids": ids,
        "pixel_values": np.arange(5)[:, None] * np.ones((5, 2)),
        "vision_inputs": {"rot_hw": np.arange(5)[:, None]},
    }
    out = _rolled_images(arrays, np.arange(5), img)
    # one-image rows 0, 2, 4 cycle among themselves; two-image rows 1, 3 swap
    assert out["pixel_values"][:, 0].tolist() == [4, 3, 0, 1, 2]
    assert out["vision_inputs"]["rot_hw"][:, 0].tolist() == [4, 3, 0, 1, 2]
    assert (out["input_ids"] == ids).all()


def _records(answers: dict, control: dict | None = None):
    """Evaluation records: vqa rows v0.. with target 'yes', grounding rows g0.. with truth box [0, 0, 10, 10]."""
    recs = []
    for eid, ans in answers.items():
        task = "vqa" if eid.startswith("v") else "grounding"
        rec = {
            "example_id": eid,
            "task": task,
            "question_type": None,
            "output": ans,
            "answer": ans,
            "target": "yes" if task == "vqa" else "[0, 0, 10, 10]",
            "boxes_true": [] if task == "vqa" else [[0.0, 0.0, 10.0, 10.0]],
            "image_size": (64, 64),
        }
        if control is not None:
            rec["control_answer"] = control[eid]
        recs.append(rec)
    return recs


def test_paired_difference_is_tighter_than_unpaired_and_flags_zero():
    rng = np.random.default_rng(0)
    a = rng.random(300)
    b = a + 0.05 + 0.02 * rng.standard_normal(300)  # b better by 0.05 on every item, small noise
    d = paired_difference(a, b)
    assert abs(d["mean"] - 0.05) < 0.01 and d["ci"][0] > 0.04 and d["excludes_zero"] and d["n"] == 300
    same = paired_difference(a, a + 0.02 * rng.standard_normal(300))
    assert not same["excludes_zero"] and same["ci"][0] < 0 < same["ci"][1]


def test_stage_differences_and_image_drop_from_records():
    n = 60
    good = {**{f"v{i}": "yes" for i in range(n)}, **{f"g{i}": "[0, 0, 10, 10]" for i in range(n)}}
    bad = {
        **{f"v{i}": ("yes" if i % 4 == 0 else "no") for i in range(n)},
        **{f"g{i}": ("[0, 0, 10, 10]" if i % 4 == 0 else "[30, 30, 40, 40]") for i in range(n)},
    }
    scores = example_scores(_records(good))
    assert set(scores) == {"vqa_score", "grounding.miou", "grounding.acc_at_0_5"} and len(scores["vqa_score"]) == n
    diffs = stage_differences({"sft": _records(bad), "cold_start": _records(good), "grpo": _records(good)})
    up = diffs["cold_start-sft"]
    assert abs(up["vqa_score"]["mean"] - 0.75) < 1e-9 and up["vqa_score"]["excludes_zero"]
    assert abs(up["grounding.acc_at_0_5"]["mean"] - 0.75) < 1e-9 and up["grounding.miou"]["ci"][0] > 0.5
    vqa_diff = diffs["grpo-cold_start"]["vqa_score"]
    assert vqa_diff["mean"] == 0 and not vqa_diff["excludes_zero"]
    table = difference_table(diffs)
    assert "cold_start − sft" in table and "0.750 [" in table and " *" in table
    drop = image_drop(_records(good, control=bad), n_bootstrap=200)
    assert drop["vqa_score"]["excludes_zero"] and abs(drop["grounding.miou"]["mean"] - 0.75) < 1e-9
    assert not image_drop(_records(good, control=good), n_bootstrap=200)["vqa_score"]["excludes_zero"]
    cites = citation_stats(_records(bad))
    assert cites["cite_rate"]["mean"] == 0.5 and abs(cites["cited_box_iou"]["mean"] - 0.25) < 1e-9


def test_image_drop_by_question_type_splits_the_vqa_drop():
    """Presence answers flip with swapped images, location answers do not: only presence shows a drop, each
    type's real / swapped means equal a plain count, grounding rows stay out, and the summary table shows both."""
    n = 40
    good = {**{f"v{i}": "yes" for i in range(2 * n)}, **{f"g{i}": "[0, 0, 10, 10]" for i in range(5)}}
    control = {
        **{f"v{i}": ("no" if i < n and i % 2 else "yes") for i in range(2 * n)},
        **{f"g{i}": "[30, 30, 40, 40]" for i in range(5)},
    }
    recs = _records(good, control=control)
    for r in recs:
        if r["task"] == "vqa":
            r["question_type"] = "presence" if int(r["example_id"][1:]) < n else "location"
    recs[-6]["task"], recs[-6]["question_type"] = "classification", None  # v79: no question type
    by_type = image_drop_by_question_type(recs, n_bootstrap=200)
    assert set(by_type) == {"presence", "location", "classification"}
    pres = by_type["presence"]
    assert pres["real"] == 1.0 and pres["swapped"] == 0.5 and pres["drop"]["n"] == n
    assert abs(pres["drop"]["mean"] - 0.5) < 1e-12 and pres["drop"]["excludes_zero"]
    assert by_type["location"]["drop"]["mean"] == 0 and not by_type["location"]["drop"]["excludes_zero"]
    assert by_type["location"]["drop"]["n"] == n - 1 and by_type["classification"]["drop"]["n"] == 1
    table = question_type_table({"sft": {"image_control": {"drop_by_question_type": by_type}}, "grpo": {}})
    assert "| presence | 40 | 1.00 / 0.50, drop 0.500 [" in table and "| question type | n | sft |" in table
    assert question_type_table({"sft": {}}) == ""


def test_trace_box_copy_rate_counts_answers_whose_box_the_trace_cites():
    copied = "<think>the effusion at [10, 20, 30, 40] on the left</think>\nThe answer is: \\boxed{[10, 20, 30, 40]}"
    moved = "<think>the effusion at [10, 20, 30, 40] on the left</think>\nThe answer is: \\boxed{[11, 20, 30, 40]}"
    assert trace_box_copied(copied) and not trace_box_copied(moved)
    assert not trace_box_copied("<think>no box</think> \\boxed{[1, 2, 3, 4]}") and not trace_box_copied("[1, 2, 3, 4]")
    recs = [{"task": "grounding", "output": o, "boxes_true": [[10, 20, 30, 40]]} for o in (copied, moved, moved)]
    recs.append({"task": "grounding", "output": "[10, 20, 30, 40]", "boxes_true": [[10, 20, 30, 40]]})  # plain: skipped
    stats = citation_stats(recs, n_bootstrap=20)
    assert abs(stats["trace_box_copy_rate"]["mean"] - 1 / 3) < 1e-9


def test_examples_skipped_as_too_long_reach_the_metrics_and_the_summary(tmp_path):
    """A streamed batch's meta['skipped'] (examples dropped as too long since the last batch) is logged per step as
    data/skipped_too_long, and summary.md totals it per stage."""

    class Stream:  # three batches; the second follows two skipped examples
        def __init__(self):
            self.k = 0

        def __next__(self):
            self.k += 1
            return {"x": jnp.ones(2)}, {"skipped": ["a", "b"] if self.k == 2 else []}

        def get_state(self):
            return {"k": self.k}

    state = TrainState(params={"w": jnp.zeros(())}, opt_state=(), step=jnp.int32(0), rng=jnp.zeros(2, jnp.uint32))
    step = lambda s, batch: (s.replace(step=s.step + 1), {"loss": jnp.float32(1.0)})
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    train_loop(step, state, Stream(), LoopConfig(num_steps=3, stage="sft", progress=False), LoopIO(writer=writer))
    writer.close()
    recs = read_metrics(tmp_path)
    assert [r["data/skipped_too_long"] for r in recs] == [0, 2, 0]
    assert "sft 2" in skipped_line(recs) and skipped_line(recs[:1]) == ""
