"""Jitted byte-array parsing (dmx_jax.rewards.text_bytes / parse) equals plain-Python regex references on
fuzzed ASCII completions; decode_tokens equals the tokenizers' own decode."""

import math
import random
import re
from fractions import Fraction

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data_pipelines.tokenizer import SPECIAL_TOKENS, HFTokenizer, train_sentencepiece
from dmx_jax.rewards import paper, parse
from dmx_jax.rewards import text_bytes as tb
from tests.helpers import reward_fuzz

MAX_BOXES = 4
BOX_RE = r"\[([-+]?\d*\.?\d+(?:,\s*[-+]?\d*\.?\d+){3})\]"

# numbers whose "> 512" decision needs float64 rounding, not float32 or naive digit comparison
TIE = "512.00000000000005684341886080801486968994140625"  # 512 + 2^-44 exactly: rounds to 512
NEAR_512 = [
    TIE,
    TIE[:-1] + "6",
    TIE[:-1] + "4",
    TIE + "0000001",
    "512.0000000000000568",
    "512.0000000000000569",
    "512.000000001",
    "512.0",
    "0512.00",
    "000000511.9999999999999999999",
    "512.00000000000000000001",
    "+512.1",
    "-512.1",
    "-0",
    "513",
    "1000",
    "0.5",
    ".000000000000000000000000000000000000000000001",
    "99999999999999999999999999999999999999999999999999",
    "12.3456789012345678901234567890123456789012",
]


def reference(completion: str) -> dict:
    """Plain-Python / regex statement of what the parser must find, on the published regexes."""
    text = re.sub(r"\s*(<|>|/)\s*", r"\1", completion)
    blocks = re.findall(r"<think>(.*?)</think>", text, re.DOTALL)
    boxes = [[a.strip() for a in m.split(",")] for m in re.findall(BOX_RE, blocks[0])] if blocks else []
    over = [max(float(a) for a in b) > 512 for b in boxes]
    m = sum(-4 if o else 1 for o in over)
    return {
        "text": text.encode(),
        "format": bool(re.fullmatch(r"<think>.*</think>.*\\boxed\{.*\}.*", text, re.DOTALL)),
        "answer": paper.scored_answer(text).encode(),
        "boxes": boxes,
        "over": over,
        "coordinate": np.float32(0.15 if m >= 3 else m / 20),
        "published_coordinate": paper.coordinate_score(text),
    }


def _completions():
    rng = random.Random(7)
    out = [reward_fuzz.completion(rng) for _ in range(300)]
    out += ["<think>[" + ",".join(rng.sample(NEAR_512, 4)) + "]</think>" for _ in range(40)]
    out += [
        "<think>" + " ".join(reward_fuzz.cited_box(rng, strict=True) for _ in range(rng.randint(3, 9))) + "</think>"
        for _ in range(30)
    ]
    out += [
        "",
        "<think>",
        "\\boxed{",
        "\\boxed{}",
        "\\boxed{ \t}",
        "\\boxed{\\boxed{a}}",
        "<think>a</think>\\boxed{a}}",
        "<think>[1,2,3,4]" * 3 + "</think>",
        "<think>" + "[1,2,3,4]" * 4 + "[1,2,3,999]</think>",
    ]
    return out


@pytest.fixture(scope="module")
def parsed():
    completions = _completions()
    width = 64 * math.ceil(max(len(c) for c in completions) / 64)
    text, text_len = tb.encode_texts(completions, width)
    out = jax.jit(lambda t, n: parse.parse_completions(t, n, max_boxes=MAX_BOXES))(text, text_len)
    return completions, jax.tree.map(np.asarray, out)


def test_fuzz_covers_the_interesting_cases(parsed):
    completions, out = parsed
    refs = [reference(c) for c in completions]
    assert sum(r["format"] for r in refs) >= 30
    assert sum(len(r["boxes"]) > MAX_BOXES for r in refs) >= 3
    assert sum(any(r["over"]) for r in refs) >= 30 and sum(not any(r["over"]) and bool(r["boxes"]) for r in refs) >= 10
    assert sum(r["answer"] == b"None" for r in refs) >= 30 and sum(r["answer"] == b" " for r in refs) >= 3
    assert sum(r["text"] != c.encode() for r, c in zip(refs, completions)) >= 100


def test_normalise_format_answer_match_reference(parsed):
    completions, out = parsed
    for i, c in enumerate(completions):
        ref = reference(c)
        assert bytes(out["text"][i, : out["text_len"][i]]) == ref["text"], c
        assert not out["text"][i, out["text_len"][i] :].any(), c
        assert out["format"][i] == float(ref["format"]), c
        assert bytes(out["answer"][i, : out["answer_len"][i]]) == ref["answer"], c
        assert not out["answer"][i, out["answer_len"][i] :].any(), c


def test_cited_boxes_and_coordinate_match_reference(parsed):
    completions, out = parsed
    for i, c in enumerate(completions):
        ref = reference(c)
        n = len(ref["boxes"])
        assert out["count"][i] == n and out["over_count"][i] == sum(ref["over"]), c
        k = min(n, MAX_BOXES)
        assert out["box_valid"][i].tolist() == [True] * k + [False] * (MAX_BOXES - k), c
        assert out["box_over_512"][i, :k].tolist() == ref["over"][:k] and not out["box_over_512"][i, k:].any(), c
        for box, strings in zip(out["boxes"][i], ref["boxes"]):
            with np.errstate(over="ignore"):
                want = np.array([float(s) for s in strings], np.float32)
            np.testing.assert_allclose(box, want, rtol=2e-7, atol=1.2e-38, err_msg=c)  # denormals may flush
            for got, s in zip(box, strings):  # correctly rounded for <= 7 significant, <= 10 decimals
                digits = s.lstrip("+-").split(".")
                if len((digits[0] + "".join(digits[1:])).lstrip("0")) <= 7 and len(digits[-1]) <= 10:
                    assert got == np.float32(float(s)), (c, s)
        assert not out["boxes"][i, k:].any(), c
        # exact value m/20 in float32; the published float64 running sum differs only by round-off
        assert out["coordinate"][i] == ref["coordinate"], c
        tol = 6e-8 * abs(ref["coordinate"]) + 1e-15
        assert abs(float(out["coordinate"][i]) - ref["published_coordinate"]) <= tol, c


def test_half_ulp_constant_is_exact():
    digits = "".join(map(str, parse._HALF_ULP_DIGITS[:44]))
    assert Fraction(int(digits), 10**44) == Fraction(1, 2**44) and parse._HALF_ULP_DIGITS[44] == 0
    assert float(TIE) == 512.0 and float(TIE[:-1] + "6") > 512.0


def test_encode_ground_truth_kinds():
    gts = ["a|b", "Yes", " no  effusion ", "a|" + " w" * 25, "left lower lobe opacity"]
    gt, gt_len, kind = tb.encode_ground_truth(gts, 80)
    assert kind.tolist() == [paper.ground_truth_kind(g) for g in gts] == [0, 1, 1, 2, 2]
    assert tb.decode_texts(gt, gt_len) == gts
    with pytest.raises(ValueError, match="texts\\[0\\]"):
        tb.encode_texts(["x" * 9], 8)


CORPUS = [
    "<think>The left lower lobe shows opacity [12, 34, 56, 78].</think> The answer is: \\boxed{effusion}",
    "No pneumothorax. The heart is enlarged.",
    "Pleural effusion | atelectasis",
    "ünïcode 肺 text",
] * 10


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    spm = train_sentencepiece(CORPUS, 320, tmp_path_factory.mktemp("spm"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    tok.save(str(path))
    return {"spm": spm, "hf": HFTokenizer.from_file(path)}


@pytest.mark.parametrize("name", ["spm", "hf"])
def test_decode_tokens_matches_tokenizer_decode(tokenizers, name):
    tok = tokenizers[name]
    rng = random.Random(3)
    texts = [rng.choice(CORPUS)[: rng.randint(0, 90)] + rng.choice(["", " é 肺", "\n\t[1,2,3,4]"]) for _ in range(24)]
    rows = [tok.encode(t) for t in texts]
    width = max(len(r) for r in rows) + 4
    ids = np.full((len(rows), width), tok.pad_id, np.int32)
    mask = np.zeros_like(ids, bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i] = [rng.random() < 0.8 for _ in range(width)]
        if i % 3 == 0:
            ids[i, 0], mask[i, 0] = tok.im_start_id, True  # special tokens decode to nothing
            ids[i, -1], mask[i, -1] = tok.im_end_id, True
    table = tb.token_bytes_table(tok, tok.vocab_size + 7)  # padded embedding rows -> no bytes
    assert table["length"][tok.vocab_size :].sum() == 0 and table["length"][tok.im_end_id] == 0
    ids[1, 2], mask[1, 2] = tok.vocab_size + 3, True
    text, text_len = jax.jit(tb.decode_tokens)(ids, mask, table)
    got = tb.decode_texts(text, text_len)
    for i in range(len(rows)):
        kept = [int(t) for t, m in zip(ids[i], mask[i]) if m and t not in tok.special_ids and t < tok.vocab_size]
        assert got[i] == tok.decode(kept), (name, i)
    short, short_len = jax.jit(tb.decode_tokens, static_argnames="max_len")(ids, mask, table, max_len=16)
    assert tb.decode_texts(short, short_len) == [
        bytes(r[: min(n, 16)]).decode("utf-8", "replace") for r, n in zip(np.asarray(text), np.asarray(text_len))
    ]
    if name == "spm":  # unmasked full rows reproduce the text exactly
        assert tok.decode(rows[5]) == texts[5]
    assert not np.asarray(text)[np.arange(text.shape[1])[None, :] >= np.asarray(text_len)[:, None]].any()


def test_coordinate_score_is_the_capped_sum_rounded_once():
    count = np.repeat(np.arange(0, 80), 80)
    over = np.tile(np.arange(0, 80), 80)
    keep = over <= count
    count, over = count[keep].astype(np.int32), over[keep].astype(np.int32)
    got = np.asarray(jax.jit(parse.coordinate_score)(count, over))
    for c, o, g in zip(count, over, got):
        exact = Fraction(int(c - o), 20) - Fraction(int(o), 5)
        want = np.float32(0.15) if exact > Fraction(3, 20) else np.float32(float(exact))
        assert g == want, (c, o, g, want)


def test_non_ascii_differences_are_the_documented_ones():
    """Unicode-only whitespace (NBSP, em space, NEL) is whitespace to the str reward but not to the bytes."""
    texts = ["\u00a0<think>a\u2003/ b", " \t<\x1c/ b >\x85", "é / 肺"]
    text, text_len = tb.encode_texts(texts, 24)
    got = tb.decode_texts(*jax.jit(tb.normalise_tags)(text, text_len))
    assert got == ["\u00a0<think>a\u2003/b", "</b>\x85", "é/肺"]
    assert [paper.normalise_tags(t) for t in texts] == ["<think>a/b", "</b>", "é/肺"]
