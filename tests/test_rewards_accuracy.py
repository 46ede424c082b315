"""Array accuracy reward == plain-Python references on fuzzed strings (one compiled shape per function)."""

from __future__ import annotations

import re
from collections import Counter

import jax
import numpy as np
import pytest

from dmx_jax.rewards import accuracy as A
from dmx_jax.rewards import paper
from dmx_jax.rewards.text_bytes import encode_ground_truth, encode_texts

L = 64


def _words(s):
    return re.findall(r"[a-z0-9]+", s.lower())


def rouge1_words_ref(hyp, ref):
    h, r = Counter(_words(hyp)), Counter(_words(ref))
    overlap = sum(min(c, r[w]) for w, c in h.items())
    if not h or not r:
        return 0.0
    p, rc = overlap / sum(h.values()), overlap / sum(r.values())
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def word_bleu_ref(ref, hyp, weights):
    return paper.char_bleu(tuple(_words(ref)), tuple(_words(hyp)), weights)


def accuracy_ref(answer, gt, bleu="char", rouge="stemmed"):
    kind = paper.ground_truth_kind(gt)
    if kind == paper.KIND_LIST:
        return 1.5 * paper.list_f1(answer, gt)
    if kind == paper.KIND_SHORT:
        return 1.5 * float(answer.lower() == gt.lower())
    b = paper.char_bleu if bleu == "char" else word_bleu_ref
    r = paper.rouge1_stemmed if rouge == "stemmed" else rouge1_words_ref
    return 1.5 * (b(gt, answer, (1, 0, 0, 0)) + b(gt, answer, (0.25,) * 4) + r(answer, gt)) / 3


def _fuzz(n, seed):
    rng = np.random.default_rng(seed)
    words = [
        "effusion",
        "left",
        "right",
        "Lung",
        "no",
        "yes",
        "the",
        "a",
        "edema",
        "base",
        "|",
        " | ",
        "x1",
        "small",
        "pleural",
        "heart",
        "  ",
        "\t",
        ".",
        ",",
    ]
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 9))
        s = ""
        for _ in range(k):
            s += str(rng.choice(words)) + (" " if rng.random() < 0.7 else "")
        out.append(s[:L])
    return out


@pytest.fixture(scope="module")
def pairs():
    hyps, refs = _fuzz(300, 0), _fuzz(300, 1)
    # hand cases: empty, equal, case, duplicates in lists, short hypotheses, repeated n-grams
    hand = [
        ("", "pleural effusion on the left"),
        ("a", "ab"),
        ("abab", "abab"),
        ("Yes", "yes"),
        ("yes ", "yes"),
        ("a|b|a", "a|c"),
        ("a | b", "b|a"),
        ("|", "a|"),
        ("left lung base", "left lung base"),
        ("aaaa aaaa", "aaaa"),
        ("x", "x"),
        ("the the the", "the cat the"),
    ]
    hyps += [h for h, _ in hand]
    refs += [r for _, r in hand]
    return hyps, refs


def _arr(texts):
    t, n = encode_texts(texts, L)
    return jax.numpy.asarray(t), jax.numpy.asarray(n)


def test_char_bleu_equals_nltk_semantics(pairs):
    hyps, refs = pairs
    (h, hl), (r, rl) = _arr(hyps), _arr(refs)
    for w in ((1.0, 0, 0, 0), (0.25, 0.25, 0.25, 0.25)):
        got = np.asarray(jax.jit(A.char_bleu, static_argnums=4)(h, hl, r, rl, w))
        want = np.array([paper.char_bleu(ref, hyp, w) for hyp, ref in zip(hyps, refs)])
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_word_level_scores_equal_references(pairs):
    hyps, refs = pairs
    (h, hl), (r, rl) = _arr(hyps), _arr(refs)
    got = np.asarray(jax.jit(A.rouge1_words)(h, hl, r, rl))
    np.testing.assert_allclose(got, [rouge1_words_ref(a, b) for a, b in zip(hyps, refs)], atol=1e-6)
    got = np.asarray(jax.jit(A.word_bleu, static_argnums=4)(h, hl, r, rl, (0.25,) * 4))
    np.testing.assert_allclose(
        got, [word_bleu_ref(b, a, (0.25,) * 4) for a, b in zip(hyps, refs)], atol=1e-6, rtol=1e-5
    )


def test_list_and_short_branches_are_exact(pairs):
    hyps, refs = pairs
    (h, hl), (r, rl) = _arr(hyps), _arr(refs)
    got = np.asarray(jax.jit(A.list_f1)(h, hl, r, rl))
    np.testing.assert_allclose(got, [paper.list_f1(a, b) for a, b in zip(hyps, refs)], atol=1e-6)
    got = np.asarray(jax.jit(A.short_exact)(h, hl, r, rl))
    np.testing.assert_array_equal(got, [float(a.lower() == b.lower()) for a, b in zip(hyps, refs)])


@pytest.mark.parametrize("bleu,rouge", [("char", "stemmed"), ("word", "words")])
def test_accuracy_score_equals_reference(pairs, bleu, rouge):
    hyps, refs = pairs
    h, hl = _arr(hyps)
    g, gl, kind = map(jax.numpy.asarray, encode_ground_truth(refs, L))
    got = np.asarray(
        jax.jit(A.accuracy_score, static_argnames=("bleu", "rouge"))(h, hl, g, gl, kind, bleu=bleu, rouge=rouge)
    )
    want = np.array([accuracy_ref(a, b, bleu, rouge) for a, b in zip(hyps, refs)])
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    assert {paper.ground_truth_kind(x) for x in refs} == {0, 1, 2}  # every branch exercised


def test_list_f1_counts_every_item():
    """More items than any fixed cap: every one is matched (the old 32-item cap dropped items 33+ from the
    intersection but kept them in the precision denominator)."""
    items = [f"finding{i}" for i in range(60)]
    hyps = ["|".join(items), "|".join(items[::-1]) + "|extra", " | ".join(items[:40]), "|".join(items * 2)]
    refs = ["|".join(items)] * 4
    width = max(len(x) for x in hyps + refs)
    (h, hl), (r, rl) = (map(jax.numpy.asarray, encode_texts(x, width)) for x in (hyps, refs))
    got = np.asarray(jax.jit(A.list_f1)(h, hl, r, rl))
    np.testing.assert_allclose(got, [paper.list_f1(a, b) for a, b in zip(hyps, refs)], atol=1e-6)
    assert got[0] == 1.0
