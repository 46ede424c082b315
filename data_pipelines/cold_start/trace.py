"""Validate a teacher's reply as a DeepMedix-R1 reasoning trace and map it to the stored-image frame.

Accepted form (paper.md §4), after stripping whitespace and one surrounding ``` fence:
    <think>1. step with [x1, y1, x2, y2]; 2. ...</think>
    The answer is: \\boxed{answer}
Rejections, checked in this order:
  bad_format         no single leading <think>...</think> block, an empty block, \\boxed / <think> inside it,
                     no \\boxed{...} after it, other text after it than "The answer is:" and a final '.',
                     or no box [a, b, c, d] cited inside the block;
  box_out_of_bounds  a cited box (in the resized frame the teacher was shown) is not
                     0 <= x_min < x_max <= width and 0 <= y_min < y_max <= height;
  wrong_answer       the boxed answer disagrees with the ground truth (answers_agree).
Boxes may be written with or without the space after each comma; accepted traces cite them canonically.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from data_pipelines.formatting import format_box
from dmx_jax.eval.chexpert_labeler import chexpert_labels
from dmx_jax.rewards.paper import last_boxed_span

Size = tuple[int, int]
LONG_TASKS = ("findings", "impression")
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUM] * 4) + r"\]")
_FENCE = re.compile(r"\A```[A-Za-z]*\s*\n(.*)\n\s*```\Z", re.S)
_TAIL_OK = re.compile(r"(the answer is\s*:?)?\s*\.?", re.I)


@dataclasses.dataclass(frozen=True)
class Trace:
    body: str  # the <think> content, boxes written canonically in the resized frame
    answer: str  # the teacher's \boxed{} content
    boxes: tuple[tuple[int, int, int, int], ...]  # cited boxes, resized frame, in order


def parse_reply(text: str) -> tuple[Trace | None, str]:
    """(Trace, '') or (None, why the format is bad)."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text.startswith("<think>") or text.count("<think>") != 1 or text.count("</think>") != 1:
        return None, "expected exactly one leading <think>...</think> block"
    body, tail = text[len("<think>") :].split("</think>", 1)
    body = body.strip()
    if not body or "\\boxed" in body:
        return None, "the <think> block is empty or holds the \\boxed answer"
    span = last_boxed_span(tail)
    if span is None:
        return None, "no balanced \\boxed{...} after </think>"
    rest = (tail[: span[0]] + tail[span[1] :]).strip()
    if not _TAIL_OK.fullmatch(rest):
        return None, f"unexpected text around the answer: {rest[:80]!r}"
    boxes = tuple(tuple(int(round(float(v))) for v in m.groups()) for m in _BOX.finditer(body))
    if not boxes:
        return None, "no box [x_min, y_min, x_max, y_max] cited inside <think>"
    canonical = _BOX.sub(lambda m: format_box([float(v) for v in m.groups()]), body)
    return Trace(canonical, tail[span[0] + len("\\boxed{") : span[1] - 1].strip(), boxes), ""  # type: ignore[arg-type]


def boxes_in_bounds(boxes, resized: Size) -> bool:
    w, h = resized
    return all(0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h for x1, y1, x2, y2 in boxes)


# ------------------------------------------------------------------------------------------ answer check


def normalise_answer(text: str) -> str:
    """Lower case, boxes canonical, whitespace collapsed, trailing '.' dropped."""
    text = _BOX.sub(lambda m: format_box([float(v) for v in m.groups()]), text)
    return " ".join(text.lower().split()).rstrip(". ").strip()


def _label_states(texts: list[str]) -> np.ndarray:
    """[N, 14] of 1 (positive), -1 (uncertain), 0 (negative or not mentioned) from the rule labeler."""
    labels = chexpert_labels(texts)
    return np.where(np.isnan(labels), 0.0, labels)


def answers_agree(answer: str, truth: str, task: str, long_answer_min_words: int) -> bool:
    """Does the teacher's boxed answer agree with the ground truth?

    1. equal after normalise_answer -> agree;
    2. a `|` list truth -> the sets of normalised non-empty items are equal (order and spacing free);
    3. a long truth (task findings / impression, or at least long_answer_min_words words) -> the rule-based
       CheXpert labels of both texts agree on all 14 classes, with each class reduced to positive / uncertain /
       absent (negative and unmentioned are the same);
    4. anything else (short answers) -> disagree.
    """
    a, t = normalise_answer(answer), normalise_answer(truth)
    if a == t:
        return True
    if "|" in truth:
        items = lambda s: {normalise_answer(x) for x in s.split("|")} - {""}
        return items(answer) == items(truth)
    if task in LONG_TASKS or len(truth.split()) >= long_answer_min_words:
        if not a:
            return False
        states = _label_states([answer, truth])
        return bool(np.array_equal(states[0], states[1]))
    return False


# ------------------------------------------------------------------------------------------ frames


def _stored_coordinate(r: int, stored: int, resized: int) -> str:
    """The shortest decimal v with round(v * (resized / stored)) == r, i.e. what formatting.scale_box +
    format_box map back to the resized coordinate r exactly."""
    scale = resized / stored
    for digits in range(0, 7):
        v = round(r / scale, digits)
        if round(v * scale) == r:
            return str(int(v)) if digits == 0 else f"{v:.{digits}f}"
    raise ValueError(f"no decimal maps back to {r} (stored {stored}, resized {resized})")


def to_stored_frame(text: str, size: Size, resized: Size) -> str:
    """Boxes [a, b, c, d] (integers, resized frame) -> stored-image pixels, chosen so that
    data_pipelines.formatting.rescale_box_text(result, size, resized) gives back exactly the input."""
    if tuple(size) == tuple(resized):
        return text

    def one(m: re.Match) -> str:
        r = [int(round(float(v))) for v in m.groups()]
        xs = [_stored_coordinate(v, size[i % 2], resized[i % 2]) for i, v in enumerate(r)]
        return "[" + ", ".join(xs) + "]"

    return _BOX.sub(one, text)


def render(body: str, answer: str) -> str:
    return f"<think>{body}</think>\nThe answer is: \\boxed{{{answer}}}"
