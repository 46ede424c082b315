"""The jitted reward on token ids == the string-level references on fuzzed completions.

paper preset: equals `paper_reward` (stemmed ROUGE-1 included) exactly in format / coordinate and to float32
round-off in accuracy / overall; grounded preset: its box terms equal the
evaluation's greedy matching on the boxes a regex finds in the whole completion.
"""

from __future__ import annotations

import random
import re

import jax
import numpy as np
import pytest

from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.eval.grounding import box_iou as eval_iou
from dmx_jax.eval.grounding import greedy_match
from dmx_jax.rewards import paper
from dmx_jax.rewards.combine import PRESETS, RewardConfig, ground_truth_arrays, make_reward_fn
from dmx_jax.rewards.text_bytes import token_bytes_table
from tests.helpers import reward_fuzz as F

N, T = 160, 160
BOX = re.compile(r"\[([-+]?\d*\.?\d+(?:,\s*[-+]?\d*\.?\d+){3})\]")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    rng = random.Random(7)
    texts = [F.completion(rng, max_pieces=14) for _ in range(N)]
    gts = [F.ground_truth(rng) for _ in range(N)]
    gts = [g if len(g.encode()) <= 256 else g[:200] for g in gts]
    tok = train_sentencepiece(texts + gts + list(F.WORDS) * 3, 400, tmp_path_factory.mktemp("spm"))
    ids = np.zeros((N, T), np.int32)
    mask = np.zeros((N, T), np.int32)
    kept = []
    for i, t in enumerate(texts):
        enc = tok.encode(t)[:T]
        ids[i, : len(enc)], mask[i, : len(enc)] = enc, 1
        kept.append(tok.decode(enc))
    truth_boxes = [
        [
            [rng.uniform(0, 60), rng.uniform(0, 60), rng.uniform(40, 140), rng.uniform(40, 140)]
            for _ in range(rng.randint(0, 3))
        ]
        for _ in range(N)
    ]
    return tok, ids, mask, kept, gts, truth_boxes


def test_paper_preset_equals_string_reward(batch):
    tok, ids, mask, texts, gts, boxes = batch
    cfg = RewardConfig(max_text_bytes=1024, max_answer_bytes=256, answer_bytes=256)
    fn = make_reward_fn(cfg, token_bytes_table(tok, tok.vocab_size))
    got = jax.tree.map(np.asarray, fn(ids, mask, ground_truth_arrays(gts, boxes, cfg)))
    want = [paper.paper_reward(t, g) for t, g in zip(texts, gts)]
    for key in ("format", "coordinate"):
        np.testing.assert_allclose(got[key], [w[key] for w in want], atol=1e-7, err_msg=key)
    for key in ("accuracy", "overall"):
        np.testing.assert_allclose(got[key], [w[key] for w in want], atol=3e-6, err_msg=key)
    assert got["format"].sum() > 5 and (got["coordinate"] != 0).sum() > 5 and (got["accuracy"] > 0).sum() > 5


@pytest.mark.parametrize("preset", ["grounded", "grounded_answer"])
def test_grounded_preset_box_terms_equal_greedy_matching(batch, preset):
    """grounded: the boxes a regex finds in the whole completion; grounded_answer: in its last boxed answer."""
    tok, ids, mask, texts, gts, boxes = batch
    if preset == "grounded_answer":  # the fuzzed answers seldom hold a box: every third row answers with two
        texts, ids, mask = list(texts), ids.copy(), mask.copy()
        for i in range(0, len(texts), 3):
            b = [round(v) + 3 for v in (boxes[i][0] if boxes[i] else (5, 5, 40, 40))]
            t = f"<think>1. [0, 0, 9, 9]</think> \\boxed{{left {b} and [{b[0]}, {b[1]}, {b[2] + 20}, {b[3]}]}}"
            enc = tok.encode(t)[:T]
            ids[i], mask[i] = 0, 0
            ids[i, : len(enc)], mask[i, : len(enc)] = enc, 1
            texts[i] = tok.decode(enc)
    cfg = PRESETS[preset]
    cfg = RewardConfig(**{**cfg.__dict__, "max_text_bytes": 1024, "max_answer_bytes": 256, "answer_bytes": 256})
    got = jax.tree.map(
        np.asarray,
        make_reward_fn(cfg, token_bytes_table(tok, tok.vocab_size))(ids, mask, ground_truth_arrays(gts, boxes, cfg)),
    )
    for i, (t, truth) in enumerate(zip(texts, boxes)):
        scored = paper.normalise_tags(t)
        if preset == "grounded_answer":
            scored = paper.boxed_content(scored)
            if len(scored.encode()) > cfg.answer_bytes:
                continue  # cut at the answer buffer (counted in `truncated`)
        cited = [[float(v) for v in m.split(",")] for m in BOX.findall(scored)][: cfg.max_boxes]
        if not truth:
            f1 = miou = 0.0  # prompts without truth boxes are not scored on boxes
        elif not cited:
            f1 = miou = 0.0
        else:
            pairs = greedy_match(eval_iou(np.float32(cited), np.float32(truth)))
            hits = sum(v >= 0.5 for _, _, v in pairs)
            p, r = hits / len(cited), hits / len(truth)
            f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
            miou = sum(v for _, _, v in pairs) / max(len(cited), len(truth))
        assert abs(got["grounding_f1"][i] - f1) < 1e-6 and abs(got["grounding_iou"][i] - miou) < 1e-5, (i, t, truth)
    assert (got["grounding_iou"] > 0).sum() >= 3
    expect = (
        0.9 * got["accuracy"]
        + 0.1 * got["format"]
        + got["coordinate"]
        + 0.25 * (got["grounding_f1"] + got["grounding_iou"])
    )
    np.testing.assert_allclose(got["overall"], expect, atol=1e-6)


def test_host_reference_mode_is_the_string_reward(batch):
    tok, ids, mask, texts, gts, boxes = batch
    cfg = RewardConfig(host_reference=True, max_text_bytes=1024, max_answer_bytes=256, answer_bytes=256)
    got = make_reward_fn(cfg, token_bytes_table(tok, tok.vocab_size))(
        ids[:8], mask[:8], ground_truth_arrays(gts[:8], boxes[:8], cfg)
    )
    want = [paper.paper_reward(t, g)["overall"] for t, g in zip(texts[:8], gts[:8])]
    np.testing.assert_allclose(np.asarray(got["overall"]), want, atol=1e-6)


@pytest.mark.slow
def test_bytes_per_token_cap_scores_short_rows_unchanged_and_counts_cut_rows(batch):
    """The capped decoder (max_new_tokens x bytes_per_token) gives the uncapped scores to every completion that
    fits and flags exactly the ones that do not."""
    tok, ids, mask, texts, gts, boxes = batch
    ids, mask, gts, boxes = ids[:40], mask[:40], gts[:40], boxes[:40]
    table = token_bytes_table(tok, tok.vocab_size)
    cfg = RewardConfig(**{**PRESETS["grounded"].__dict__, "max_answer_bytes": 256})
    truth = ground_truth_arrays(gts, boxes, cfg)
    full = jax.tree.map(np.asarray, make_reward_fn(cfg, table, max_new_tokens=ids.shape[1])(ids, mask, truth))
    lengths = (table["length"][ids] * (mask > 0)).sum(axis=1)  # each completion's UTF-8 bytes
    per_token = int(np.median(lengths)) // ids.shape[1] + 1
    capped_cfg = RewardConfig(**{**cfg.__dict__, "bytes_per_token": per_token})
    capped = jax.tree.map(np.asarray, make_reward_fn(capped_cfg, table, max_new_tokens=ids.shape[1])(ids, mask, truth))
    cut = lengths > per_token * ids.shape[1]
    assert 0 < cut.sum() < len(cut) and not full["truncated"].any()
    np.testing.assert_array_equal(capped["truncated"], cut.astype(np.float32))
    for key in full:
        if key != "truncated":
            np.testing.assert_array_equal(capped[key][~cut], full[key][~cut], err_msg=key)
