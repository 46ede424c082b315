"""Synthetic CXR reasoning traces: the format parses and boxes the target, steps re-render in another box
frame, the negative traces, and the grounding / VQA trace styles and box jitter.

The reference is a regex / brace-matching parser for the trace format written here.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers.synthetic_configs import CFG

from data_pipelines import boxes as B
from data_pipelines.synthetic import dataset as D
from data_pipelines.synthetic.config import SyntheticConfig
from data_pipelines.synthetic.reasoning import Step, parse_trace, render_trace
from data_pipelines.synthetic.vqa import name_phrase

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


def test_grounding_trace_names_the_asked_phrase_first_and_its_boxes_are_the_answer():
    """A phrase-first grounding trace starts from the phrase the prompt asks about and cites exactly the
    answer's boxes, in order, the last one right before the answer (no anatomy step), so the answer is a copy;
    the default (anatomy-first) trace opens on both lungs' boxes."""
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
            assert new[0] == (f"look for the {name_phrase(name)}", ())
            assert new[1:] == (old[1:] if fam == "presence" else old)
    assert families >= {"presence", "location", "zone", "level", "size", "view", "count", "abnormality", "type"}
    with pytest.raises(ValueError, match="vqa_trace"):
        SyntheticConfig(vqa_trace="answer_first")


def test_trace_box_jitter_moves_the_cited_boxes_and_the_trace_answer_copies_them():
    """With trace_box_jitter the grounding trace cites boxes moved by at most that many pixels per edge and its
    boxed answer is exactly those boxes (a copy, not the truth), while the example's target stays the truth."""
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
