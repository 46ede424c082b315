"""DeepMedix-R1's published GRPO reward (`compute_xray_score` in the authors' `src/reward.py`) over Python strings.

This is the host-side reference every array version is checked against. It reproduces the published
numbers on any input, with the published software's exact semantics:

- whitespace around `<`, `>` and `/` is removed first (Unicode `\\s`, as Python's `re` on str);
- format: the normalised text is `<think>` ... `</think>` ... `\\boxed{` ... `}` ... (dot matches newline);
- accuracy: content of the last `\\boxed{` (nested braces, then `str.strip`; "None" when the last box is
  absent or unclosed, " " when empty), scored against the ground truth by one of three branches
  (`ground_truth_kind`): item-list F1, exact short answer, or the mean of character BLEU-1, character
  BLEU-4 (nltk `sentence_bleu` on raw strings, smoothing method2) and stemmed word ROUGE-1 F;
- coordinate: 4-number brackets inside the first think block, +0.05 each, -0.2 for any value > 512,
  the running sum capped at 0.15 from above;
- overall = 0.9 * accuracy + 0.1 * format + coordinate.

The BLEU and box extraction are written out here (no nltk / mathruler import); ROUGE-1 uses `rouge_score`
(a runtime dependency), imported when a long-answer ground truth is first scored.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence

FORMAT_WEIGHT = 0.1
ANSWER_SCALE = 1.5  # every accuracy branch is scaled to [0, 1.5]
BOX_REWARD = 0.05  # per cited box with all values <= BOX_LIMIT
BOX_PENALTY = -0.2  # per cited box with some value > BOX_LIMIT
COORDINATE_CAP = 0.15
BOX_LIMIT = 512
NO_BOX_ANSWER = "None"  # what mathruler's extractor returns when there is no closed last box

THINK_OPEN, THINK_CLOSE, BOX_OPEN = "<think>", "</think>", "\\boxed{"

# ground-truth kinds (the published branch order); also used as `gt_kind` data by the array rewards
KIND_LIST, KIND_SHORT, KIND_LONG = 0, 1, 2
LIST_MAX_WORDS, SHORT_MAX_WORDS = 20, 2

_SPACE_AROUND_TAG_CHAR = re.compile(r"\s*([<>/])\s*")
# one signed decimal: optional sign, digits, optional point, at least one digit
_NUMBER = r"[-+]?\d*\.?\d+"
_CITED_BOX = re.compile(r"\[(" + _NUMBER + r"(?:,\s*" + _NUMBER + r"){3})\]")


def normalise_tags(text: str) -> str:
    """Drop every whitespace run that touches a `<`, `>` or `/` (the published pre-normalisation)."""
    return _SPACE_AROUND_TAG_CHAR.sub(r"\1", text)


def format_score(text: str) -> float:
    """1.0 iff `text` fully matches `<think>.*</think>.*\\boxed{.*}.*` (DOTALL), else 0.0.

    Taking the earliest occurrence of each piece is optimal for that pattern, so four `find`s decide it
    in linear time.
    """
    if not text.startswith(THINK_OPEN):
        return 0.0
    close = text.find(THINK_CLOSE, len(THINK_OPEN))
    if close < 0:
        return 0.0
    box = text.find(BOX_OPEN, close + len(THINK_CLOSE))
    if box < 0:
        return 0.0
    return 1.0 if text.find("}", box + len(BOX_OPEN)) >= 0 else 0.0


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """(index of the last `\\boxed{`, index just past the `}` that closes it) (braces nest), or None when the
    text has no `\\boxed{` or the last one never closes. The project's one host-side brace matcher."""
    start = text.rfind(BOX_OPEN)
    if start < 0:
        return None
    depth = 0
    for i in range(start + len(BOX_OPEN), len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return start, i + 1
            depth -= 1
    return None


def last_boxed(text: str) -> str | None:
    """The raw content of the last `\\boxed{` up to the `}` that closes it (braces nest), or None when the
    text has no `\\boxed{` or the last one never closes (mathruler's `extract_boxed_content` semantics):
    the paper reward, the answer parser of data_pipelines.formatting and the synthetic traces all call it."""
    span = last_boxed_span(text)
    return None if span is None else text[span[0] + len(BOX_OPEN) : span[1] - 1]


def boxed_content(text: str) -> str:
    """Stripped content of the last `\\boxed{...}` (braces nest); "None" if that box is missing or unclosed."""
    content = last_boxed(text)
    return NO_BOX_ANSWER if content is None else content.strip()


def scored_answer(text: str) -> str:
    """The answer string the accuracy branches see: the boxed content, " " when it is empty."""
    answer = boxed_content(text)
    return answer if answer else " "


def ground_truth_kind(ground_truth: str) -> int:
    """KIND_LIST, KIND_SHORT or KIND_LONG by the published rule (word counts use `str.split`)."""
    n_words = len(ground_truth.strip().split())
    if "|" in ground_truth and n_words <= LIST_MAX_WORDS:
        return KIND_LIST
    return KIND_SHORT if n_words <= SHORT_MAX_WORDS else KIND_LONG


def list_f1(answer: str, ground_truth: str) -> float:
    """F1 of "|"-separated items (stripped, lower-cased); set intersection over list lengths."""
    gt_items = [item.strip().lower() for item in ground_truth.strip().split("|")]
    pred_items = [item.strip().lower() for item in answer.strip().split("|")]
    n_common = len(set(gt_items) & set(pred_items))
    precision = n_common / len(pred_items)
    recall = n_common / len(gt_items)
    if precision + recall <= 0:
        return 0
    return 2 * (precision * recall) / (precision + recall)


def char_bleu(reference: str, hypothesis: str, weights: Sequence[float]) -> float:
    """nltk 3.9 `sentence_bleu([reference], hypothesis, weights, SmoothingFunction().method2)` on raw strings.

    Strings are sequences of characters, so n-grams are character n-grams. Semantics kept exactly:
    precisions for n = 1..4 (len(weights)) are clipped counts over max(1, #hypothesis n-grams); the result
    is 0 when no unigram matches; method2 adds 1 to numerator and denominator of every order except
    unigrams; orders with weight 0 still pass through `0 * log(p)`; brevity penalty exp(1 - r/h) when
    h <= r; the sum of weighted logs is taken with `math.fsum`.
    """
    hyp_len, ref_len = len(hypothesis), len(reference)
    precisions = []
    for n in range(1, len(weights) + 1):
        hyp_counts = Counter(hypothesis[i : i + n] for i in range(hyp_len - n + 1))
        ref_counts = Counter(reference[i : i + n] for i in range(ref_len - n + 1))
        clipped = sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
        total = max(1, sum(hyp_counts.values()))
        if n == 1:
            if clipped == 0:
                return 0
            precisions.append(clipped / total)
        else:
            precisions.append((clipped + 1) / (total + 1))
    if hyp_len > ref_len:
        brevity = 1
    elif hyp_len == 0:
        brevity = 0
    else:
        brevity = math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions) if p > 0))


@functools.lru_cache(maxsize=1)
def _rouge1_scorer():
    from rouge_score import rouge_scorer  # noqa: PLC0415 heavy

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_stemmed(answer: str, ground_truth: str) -> float:
    """rouge_score ROUGE-1 F-measure with the Porter stemmer, argument order as published (answer first)."""
    return _rouge1_scorer().score(answer, ground_truth)["rouge1"].fmeasure


def accuracy_score(text: str, ground_truth: str) -> float:
    """Published `accuracy_xray_reward_new` on already-normalised text; in [0, 1.5]."""
    answer = scored_answer(text)
    kind = ground_truth_kind(ground_truth)
    if kind == KIND_LIST:
        return list_f1(answer, ground_truth) * ANSWER_SCALE
    if kind == KIND_SHORT:
        return ANSWER_SCALE if answer.lower() == ground_truth.lower() else 0.0
    bleu1 = char_bleu(ground_truth, answer, (1, 0, 0, 0))
    bleu4 = char_bleu(ground_truth, answer, (0.25, 0.25, 0.25, 0.25))
    return (bleu1 + bleu4 + rouge1_stemmed(answer, ground_truth)) / 3 * ANSWER_SCALE


def first_think_block(text: str) -> str | None:
    """What `re.findall(r'<think>(.*?)</think>', text, re.DOTALL)[0]` gives, or None when it finds nothing."""
    start = text.find(THINK_OPEN)
    if start < 0:
        return None
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN))
    return None if end < 0 else text[start + len(THINK_OPEN) : end]


def cited_boxes(block: str) -> list[list[float]]:
    """Every `[a, b, c, d]` (signed decimals, comma + optional whitespace) in `block`, as floats."""
    return [[float(v.strip()) for v in m.split(",")] for m in _CITED_BOX.findall(block)]


def coordinate_score(text: str) -> float:
    """+0.05 per cited box in the first think block, -0.2 if a value exceeds 512; running sum capped at 0.15."""
    block = first_think_block(text)
    if block is None:
        return 0.0
    value = 0.0
    for box in cited_boxes(block):
        value += BOX_PENALTY if max(box) > BOX_LIMIT else BOX_REWARD
    return COORDINATE_CAP if value > COORDINATE_CAP else value


def paper_reward(completion: str, ground_truth: str, format_weight: float = FORMAT_WEIGHT) -> dict[str, float]:
    """The published per-sample reward: dict(overall, format, accuracy, coordinate)."""
    if not isinstance(completion, str) or not isinstance(ground_truth, str):
        raise TypeError(
            f"paper_reward: completion and ground_truth must be str, got "
            f"{type(completion).__name__} and {type(ground_truth).__name__}"
        )
    text = normalise_tags(completion)
    fmt = format_score(text)
    acc = accuracy_score(text, ground_truth)
    coord = coordinate_score(text)
    return {
        "overall": (1 - format_weight) * acc + format_weight * fmt + coord,
        "format": fmt,
        "accuracy": acc,
        "coordinate": coord,
    }


def paper_rewards(
    completions: Sequence[str], ground_truths: Sequence[str], format_weight: float = FORMAT_WEIGHT
) -> list[dict[str, float]]:
    """`paper_reward` over paired lists (the published batch signature)."""
    if len(completions) != len(ground_truths):
        raise ValueError(f"paper_rewards: {len(completions)} completions but {len(ground_truths)} ground truths")
    return [paper_reward(c, g, format_weight) for c, g in zip(completions, ground_truths)]
