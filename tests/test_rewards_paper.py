"""dmx_jax.rewards.paper equals DeepMedix-R1's published compute_xray_score, restated here from the actual
nltk, rouge_score and mathruler functions it calls, on hand-picked edge cases and fuzzed completions."""

import math
import random
import re

import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")
grader = pytest.importorskip("mathruler.grader")  # mathruler 0.1.0 (+ sympy, pylatexenc)

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from dmx_jax.rewards import paper  # noqa: E402
from tests.helpers import reward_fuzz  # noqa: E402

_SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def published_reward(predict: str, ground_truth: str) -> dict:
    """Test-only restatement of the published compute_xray_score for one sample."""
    predict = re.sub(r"\s*(<|>|/)\s*", r"\1", predict)
    fmt = 1.0 if re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", predict, re.DOTALL) else 0.0

    answer = grader.extract_boxed_content(predict)
    if len(answer) == 0:
        answer = " "
    n_words = len(ground_truth.strip().split())
    if "|" in ground_truth and n_words <= 20:
        gts = [x.strip().lower() for x in ground_truth.strip().split("|")]
        preds = [x.strip().lower() for x in answer.strip().split("|")]
        common = set(gts) & set(preds)
        p = len(common) / len(preds) if len(preds) > 0 else 0
        r = len(common) / len(gts) if len(gts) > 0 else 0
        acc = (2 * (p * r) / (p + r) if (p + r) > 0 else 0) * 1.5
    elif n_words <= 2:
        acc = 1.5 if answer.lower() == ground_truth.lower() else 0.0
    else:
        smooth = SmoothingFunction().method2
        b1 = sentence_bleu([ground_truth], answer, weights=(1, 0, 0, 0), smoothing_function=smooth)
        b4 = sentence_bleu([ground_truth], answer, weights=(0.25, 0.25, 0.25, 0.25), smoothing_function=smooth)
        acc = (b1 + b4 + _SCORER.score(answer, ground_truth)["rouge1"].fmeasure) / 3 * 1.5

    coord = 0.0
    blocks = re.findall(r"<think>(.*?)</think>", predict, re.DOTALL)
    if blocks:
        for m in re.findall(r"\[([-+]?\d*\.?\d+(?:,\s*[-+]?\d*\.?\d+){3})\]", blocks[0]):
            coord += -0.2 if max(float(a.strip()) for a in m.split(",")) > 512 else 0.05
        if coord > 0.15:
            coord = 0.15
    return {"overall": 0.9 * acc + 0.1 * fmt + coord, "format": fmt, "accuracy": acc, "coordinate": coord}


def assert_same(completion: str, gt: str):
    got, want = paper.paper_reward(completion, gt), published_reward(completion, gt)
    ctx = f"completion={completion!r} gt={gt!r} got={got} want={want}"
    assert set(got) == {"overall", "format", "accuracy", "coordinate"}, ctx
    assert got["format"] == want["format"] and got["coordinate"] == want["coordinate"], ctx
    assert abs(got["accuracy"] - want["accuracy"]) <= 1e-9, ctx
    assert abs(got["overall"] - want["overall"]) <= 1e-9, ctx


LONG_GT = "There is a small left pleural effusion with basal atelectasis."
CASES = [
    ("", "Yes"),
    ("", LONG_GT),
    ("", "a|b"),
    ("<think>", "Yes"),
    ("<think>reason", LONG_GT),
    ("<think>a</think>The answer is: \\boxed{Yes", "Yes"),  # truncated box
    ("<think>a</think>\\boxed{Yes}", "Yes"),
    ("<think>a</think>\\boxed{yes}", "YES"),
    ("<think>a</think>\\boxed{ Yes }", " Yes"),  # unstripped short GT
    ("think>a</think>\\boxed{x}", "x"),
    ("<think>a<think>b</think>\\boxed{x}", "x"),
    ("<think>a</think></think>\\boxed{x}\\boxed{y}", "y"),  # repeated tags, last box
    ("<think>a</think>\\boxed{x}\\boxed{y", "x"),  # unclosed last box -> None
    ("<think>a</think>\\boxed{}", "x y z w"),
    ("<think>a</think>\\boxed{   }", "x"),
    ("<think>a</think>\\boxed{\\frac{1}{2}} tail", "\\frac{1}{2}"),  # nested braces
    ("<think>a</think>\\boxed{{a}{b}", "x"),
    ("<think>a</think>\\boxed{}}", "x"),
    ("<think>a</think>\\boxed{None}", "None"),
    ("no box at all", "None"),
    ("no box", "none"),
    ("<think>a</think>\\boxed{Effusion | atelectasis| effusion}", "effusion|Atelectasis|effusion|edema"),
    ("<think>a</think>\\boxed{a|b}", "a|a|a"),
    ("<think>a</think>\\boxed{|}", "|"),
    ("  < think >  x [1, 2, 3, 4] < / think >\n\\boxed{ a / b }", "a/b"),  # whitespace around tags
    ("\t<think>\n[1,2,3,4][5, 6,\t7,\n8]</think>\\boxed{x}", "x"),
    ("\x0b<think>\x1c[1,2,3,4]\r</think>\\boxed{x}", "x"),
    ("\u00a0\u2003<think>a</think>\\boxed{x}", "x"),
    ("\x1f\x0c<think>a</think>\\boxed{a \x1d/\x1e b}", "a/b"),
    ("<think>[1,2,3,513] [0,0,0,512]</think>\\boxed{x}", "x"),  # > 512 and == 512
    ("<think>[1,2,3,512.0000001][-600,0,0,0][+513,1,1,1]</think>", "x"),
    ("<think>[512.00000000000005684341886080801486968994140625,0,0,0]</think>", "x"),  # tie: rounds to 512
    ("<think>[512.00000000000005684341886080801486968994140626,0,0,0]</think>", "x"),
    ("<think>[.5,-.5,+.5,0512][5.,1,2,3][1.2.3,1,2,3][1,2,3][1,2,3,4,5][ 1,2,3,4][1,2,3,4 ]</think>", "x"),
    ("<think>" + "[1,2,3,4]" * 5 + "</think>\\boxed{x}", "x"),  # > 3 boxes: capped
    ("<think>" + "[1,2,3,4]" * 3 + "[1,2,3,999]" + "[1,2,3,4]" * 4 + "</think>", "x"),
    ("<think>" + "[999,1,1,1]" * 4 + "</think>", "x"),  # no lower bound
    ("<think>[1,2,3,4]</think><think>[1,2,3,4][5,6,7,8]</think>\\boxed{x}", "x"),  # second think block ignored
    ("<think>[1,2,3,\u0663]\u00a0[1,\u00a02,3,4]</think>\\boxed{\u00e9}", "\u00c9"),  # Unicode \d, \s, lower
    ("<think>x</think>\\boxed{the lung is clear}", "The lung is clear."),
    ("<think>x</think>\\boxed{a}", "b c d"),
    ("<think>x</think>\\boxed{bcd}", "b c d"),
    ("<think>x</think>\\boxed{" + LONG_GT + "}", LONG_GT),
    ("<think>x</think>\\boxed{" + LONG_GT * 3 + "}", LONG_GT),
    ("<think>x</think>\\boxed{effusions are seen}", LONG_GT),
    ("\\boxed{ zzz }", "q r s"),
    ("\\boxed{a|b}", "a|" + " ".join(["w"] * 25)),
]


@pytest.mark.parametrize("completion,gt", CASES)
def test_hand_picked_cases_match_published(completion, gt):
    assert_same(completion, gt)


def test_fuzzed_completions_match_published():
    rng = random.Random(20250317)
    for i in range(400):
        gt = reward_fuzz.ground_truth(rng)
        completion = reward_fuzz.completion(rng, unicode=i % 4 == 0)
        if i % 5 == 0 and gt.strip():  # answers built from the ground truth: high BLEU/F1
            completion = "<think>x</think>\\boxed{" + gt[: rng.randint(0, len(gt))] + "}"
        assert_same(completion, gt)


def test_fuzz_reaches_every_branch():
    """The fuzz is only useful if it covers the branches; count what it hits."""
    rng = random.Random(20250317)
    kinds, fmt, over, positive = set(), 0, 0, 0
    for _ in range(400):
        c = reward_fuzz.completion(rng)
        kinds.add(paper.ground_truth_kind(reward_fuzz.ground_truth(rng)))
        r = paper.paper_reward(c, "x")
        fmt += r["format"] == 1.0
        over += r["coordinate"] < 0
        positive += r["coordinate"] > 0
    assert kinds == {paper.KIND_LIST, paper.KIND_SHORT, paper.KIND_LONG}
    assert min(fmt, over, positive) >= 10, (fmt, over, positive)


def test_char_bleu_matches_nltk_on_edge_lengths():
    smooth = SmoothingFunction().method2
    pairs = [
        ("abc", "x"),
        ("abcd", "a"),
        ("a", "abcdef"),
        ("aaaa", "aaaaaaa"),
        ("ab ab ab", "ab"),
        (" ", " "),
        ("abcdefgh", "abcdefgh"),
        ("abc", "cba"),
        ("hello world", "world hello"),
    ]
    for ref, hyp in pairs:
        for w in [(1, 0, 0, 0), (0.25, 0.25, 0.25, 0.25)]:
            want = sentence_bleu([ref], hyp, weights=w, smoothing_function=smooth)
            assert paper.char_bleu(ref, hyp, w) == want, (ref, hyp, w)


def test_coordinate_cap_and_float_accumulation():
    # three boxes accumulate to 0.15000000000000002 in floats and are capped to exactly 0.15
    assert paper.coordinate_score("<think>" + "[1,2,3,4]" * 3 + "</think>") == 0.15
    assert paper.coordinate_score("<think>[1,2,3,4][1,2,3,4]</think>") == 0.05 + 0.05
    assert math.isclose(paper.coordinate_score("<think>[1,2,3,600][1,2,3,4]</think>"), -0.15)


def test_bad_input_types_raise():
    with pytest.raises(TypeError, match="paper_reward"):
        paper.paper_reward(None, "x")
