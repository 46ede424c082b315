"""The Porter stemmer on device == nltk's PorterStemmer on the fuzz vocabulary of inflected English and
radiology words, which exercises every Porter step."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("nltk")

from nltk.stem.porter import PorterStemmer

from dmx_jax.rewards import porter
from dmx_jax.rewards.text_bytes import encode_texts
from tests.helpers.report_vocabulary import vocabulary


def test_vocabulary_exercises_every_porter_step():
    """The stemmer on device == nltk's PorterStemmer on every vocabulary word (and every word with a long
    head); the vocabulary makes each nltk step change some word."""
    vocab = vocabulary()
    assert len(vocab) >= 3000
    ps = PorterStemmer()
    changed = dict.fromkeys(("_step1a", "_step1b", "_step1c", "_step2", "_step3", "_step4", "_step5a", "_step5b"), 0)
    for w in vocab:
        x = w
        for name in changed:
            y = getattr(ps, name)(x)
            changed[name] += y != x
            x = y
    assert min(changed.values()) >= 5, changed
    words = vocab + ["q" * 40 + w for w in vocab[::7]] + ["yay" * 15 + w for w in vocab[::11]]  # heads
    text, length = encode_texts([" ".join(words[i : i + 40]) for i in range(0, len(words), 40)], 2560)
    slots = jax.jit(porter.long_word_slots)(text, length)
    keys = ("w", "n", "head_len", "head_m", "head_vowel", "prev_vowel")
    w, n = jax.jit(jax.vmap(porter.stem_slots))(*(slots[k] for k in keys))
    w, n, start, head, valid = (np.asarray(a) for a in (w, n, slots["start"], slots["head_len"], slots["valid"]))
    got = []
    for row in range(text.shape[0]):
        for s in np.nonzero(valid[row])[0]:
            head_bytes = bytes(text[row, start[row, s] : start[row, s] + head[row, s]])
            got.append((head_bytes + bytes(w[row, s, : n[row, s]])).decode())
    want = [ps.stem(x) for x in words]
    assert len(got) == len(want)
    bad = [(x, g, e) for x, g, e in zip(words, got, want) if g != e]
    assert not bad, bad[:10]
