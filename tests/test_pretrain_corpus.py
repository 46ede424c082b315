"""The pretraining corpus (data_pipelines.synthetic.pretrain): task mixes draw what they say, checked on a
few hundred rows; a malformed mix is refused before any rendering."""

from __future__ import annotations

import collections

import pytest

from data_pipelines.synthetic.pretrain import (
    CORPUS_MIX,
    FOCUS_MIX,
    FOCUS_START,
    CorpusMix,
    pretrain_example,
    probe_examples,
)


def _detect_stats(mix: CorpusMix, start: int, n: int) -> tuple[collections.Counter, float]:
    tasks, present = collections.Counter(), []
    for i in range(start, start + n):
        e = pretrain_example(i, mix=mix)
        tasks[e.question_type] += 1
        if e.question_type == "detect" and e.meta["findings"]:
            present.append(e.target != "none")
    return tasks, sum(present) / len(present)


@pytest.mark.parametrize("mix,start", [(CORPUS_MIX, 0), (FOCUS_MIX, FOCUS_START)])
def test_mix_draws_its_task_weights_and_detection_balance(mix, start):
    n = 300
    tasks, present = _detect_stats(mix, start, n)
    weights = dict(mix.task_weights)
    total = sum(weights.values())
    for task, w in weights.items():
        if task in ("side", "view"):  # a side question on a study without findings becomes a view one
            continue
        assert abs(tasks[task] / n - w / total) < 0.08, (task, tasks)
    assert set(tasks) <= set(weights) | {"view"}
    assert abs(present - mix.detect_present) < 0.15, present


def test_same_index_and_mix_give_the_same_row():
    a, b = pretrain_example(17, mix=FOCUS_MIX), pretrain_example(17, mix=FOCUS_MIX)
    assert (a.prompt, a.target) == (b.prompt, b.target) and (a.images[0] == b.images[0]).all()


@pytest.mark.parametrize(
    "kw",
    [
        dict(task_weights=(("paint", 1.0),)),
        dict(task_weights=()),
        dict(task_weights=(("detect", -1.0),)),
        dict(task_weights=(("detect", 1.0),), detect_present=1.5),
    ],
)
def test_malformed_mix_is_refused(kw):
    with pytest.raises(ValueError, match="CorpusMix"):
        CorpusMix(**kw)


def test_probe_neighbours_are_different_studies():
    """The images-swapped control hands each probe prompt its neighbour's image: never its own study's."""
    study = [e.example_id.split("/")[2] for e in probe_examples(24)]
    assert len(study) > 30
    assert all(a != b for a, b in zip(study, study[1:]))
