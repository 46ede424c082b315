"""The jitted `paper` preset == the published compute_xray_score (nltk, rouge_score, mathruler) on thousands
of fuzzed completions: report sentences over a generated vocabulary of inflected English and radiology words,
completions over 4,000 characters, and a 1,024-token completion decoded from token ids on device."""

from __future__ import annotations

import dataclasses
import random

import jax
import jax.extend.core
import numpy as np
import pytest

pytest.importorskip("nltk")
pytest.importorskip("rouge_score")
pytest.importorskip("mathruler.grader")

from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.rewards import paper_reward, score_texts
from dmx_jax.rewards.combine import PRESETS, ground_truth_arrays, make_reward_fn, reward_byte_budget, score_bytes
from dmx_jax.rewards.text_bytes import encode_texts, token_bytes_table
from tests.helpers import reward_fuzz as F
from tests.helpers.report_vocabulary import report, vocabulary
from tests.test_rewards_paper import published_reward


def _fuzz_rows(n: int, seed: int, long_chars: int = 0):
    rng = random.Random(seed)
    vocab = vocabulary()
    completions, gts = [], []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # format / box / tag fuzz with a fuzzed ground truth
            c, g = F.completion(rng, max_pieces=14), F.ground_truth(rng)
        else:  # report sentences against a report ground truth
            g = report(rng, vocab, rng.randint(3, 40))
            if kind == 1:
                ans = report(rng, vocab, rng.randint(0, 40))
            elif kind == 2:  # a noisy copy of the ground truth: high overlap
                words = g.split()
                rng.shuffle(words)
                ans = " ".join(words[: rng.randint(0, len(words))])
            else:
                ans = g.lower() if rng.random() < 0.5 else g
            steps = "; ".join(
                f"{report(rng, vocab, rng.randint(2, 12))} {F.cited_box(rng, strict=True)}"
                for _ in range(rng.randint(0, 4))
            )
            c = f"<think>{steps}</think>\nThe answer is: \\boxed{{{ans}}}"
        if long_chars:
            pad = report(rng, vocab, long_chars // 6)
            if "<think>" in c and rng.random() < 0.5:
                c = c.replace("<think>", "<think>" + pad + " ", 1)
            else:
                c = c + " " + pad
            if kind and rng.random() < 0.5:
                c = c + " \\boxed{" + report(rng, vocab, long_chars // 8) + "}"
        completions.append(c)
        gts.append(g)
    return completions, gts


def _check(completions, gts, chunk: int = 2048):
    # one jitted call per 2,048 rows
    parts = [score_texts(completions[i : i + chunk], gts[i : i + chunk]) for i in range(0, len(completions), chunk)]
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    want = [published_reward(c, g) for c, g in zip(completions, gts)]
    for key in ("format", "coordinate"):
        np.testing.assert_allclose(got[key], [w[key] for w in want], atol=1e-7, err_msg=key)
    for key in ("accuracy", "overall"):
        err = np.abs(got[key] - np.array([w[key] for w in want]))
        i = int(np.argmax(err))
        assert err[i] <= 3e-6, (key, err[i], completions[i][:300], gts[i][:300])
    return got


def _primitives(jaxpr) -> set[str]:
    out = set()
    for eqn in jaxpr.eqns:
        out.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out |= _primitives(sub)
    return out


def test_paper_reward_has_no_overwriting_scatter():
    """The jitted `paper` reward compacts and places values by gathers only: no scatter whose result would
    depend on the order a backend applies the writes in (the one scatter-add left sums digit values)."""
    cfg = PRESETS["paper"]
    text, n = encode_texts(["<think>[1, 2, 3, 4]</think> \\boxed{left lung effusions}"], 128)
    truth = ground_truth_arrays(["small left pleural effusions"], [[]], cfg)
    prims = _primitives(jax.make_jaxpr(lambda t, k, tr: score_bytes(t, k, tr, cfg))(text, n, truth).jaxpr)
    assert "scatter" not in prims, sorted(p for p in prims if "scatter" in p)


@pytest.mark.slow
def test_two_thousand_fuzzed_completions_equal_published():
    completions, gts = _fuzz_rows(1920, seed=11)
    got = _check(completions, gts)
    assert (got["accuracy"] > 0).sum() > 800 and got["format"].sum() > 400
    completions, gts = _fuzz_rows(64, seed=12, long_chars=4500)
    assert min(len(c) for c in completions) > 4000
    _check(completions, gts)


def test_fuzzed_completions_equal_published_quick():
    completions, gts = _fuzz_rows(256, seed=13)
    _check(completions, gts)


@pytest.mark.slow
def test_1024_token_completion_on_device_equals_paper_reward(tmp_path):
    rng = random.Random(5)
    vocab = vocabulary()
    gt = report(rng, vocab, 30)
    body = report(rng, vocab, 2000)
    tok = train_sentencepiece([body, gt] + vocab[:500], 600, tmp_path)
    head = tok.encode(f"<think>{body[:300]} [10, 20, 30, 40]</think>\nThe answer is: \\boxed{{")
    tail = tok.encode("}")
    ans = tok.encode(gt + " " + body[300:])[: 1024 - len(head) - len(tail)]
    ids = np.array([head + ans + tail], np.int32)
    assert ids.shape[1] == 1024
    table = token_bytes_table(tok, tok.vocab_size)
    cfg = PRESETS["paper"]
    truth = ground_truth_arrays([gt], [[]], cfg)
    text = tok.decode(ids[0].tolist())
    want = paper_reward(text, gt)
    budget = reward_byte_budget(1024, table)
    assert budget == 1024 * int(table["length"].max())
    got = make_reward_fn(cfg, table, max_new_tokens=1024)(ids, np.ones_like(ids), truth)
    assert float(got["truncated"][0]) == 0.0
    for key in ("format", "accuracy", "coordinate", "overall"):
        assert abs(float(got[key][0]) - want[key]) <= 3e-6, (key, float(got[key][0]), want[key])
    assert want["format"] == 1.0 and want["accuracy"] > 0.3
    # a budget below the completion's length cuts it, and says so
    small = make_reward_fn(dataclass_replace(cfg, max_text_bytes=len(text.encode()) // 2), table)
    cut = small(ids, np.ones_like(ids), truth)
    assert float(cut["truncated"][0]) == 1.0 and float(cut["format"][0]) == 0.0


def dataclass_replace(cfg, **kw):
    return dataclasses.replace(cfg, **kw)
