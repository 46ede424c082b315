"""The published accuracy reward as array operations over byte strings (uint8 [B, L] + int32 lengths).

Branches by the ground truth's kind (decided on the host, `text_bytes.encode_ground_truth`):
- list (`|`): F1 of stripped, lower-cased items, set intersection over list lengths;
- short (<= 2 words): 1 when the lower-cased answer equals the lower-cased ground truth;
- long: mean of character BLEU-1, character BLEU-4 (nltk sentence_bleu, smoothing method2) and ROUGE-1 F.
Each is scaled by 1.5. Character n-grams (n <= 4 bytes) are packed exactly into uint32, so BLEU is exact;
list items and words are compared by two independent 32-bit polynomial hashes plus their length.
ROUGE-1 is rouge_score's: tokens are maximal [a-z0-9]+ runs after ASCII lower-casing, tokens longer than 3
bytes Porter-stemmed exactly as nltk's PorterStemmer (porter.py); `rouge="words"` skips the stemming.
`bleu="word"` swaps character for word n-grams (a config option). List answers may hold any number of items.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.rewards import porter
from dmx_jax.rewards.paper import KIND_LIST, KIND_LONG, KIND_SHORT
from dmx_jax.rewards.text_bytes import WHITESPACE_BYTES, byte_in, gather_or, kth_true

_P1, _P2 = np.uint32(1_000_003), np.uint32(2_654_435_761)  # odd: invertible modulo 2**32


def lower(text: jax.Array) -> jax.Array:
    upper = (text >= ord("A")) & (text <= ord("Z"))
    return jnp.where(upper, text + 32, text).astype(jnp.uint8)


def _valid(text, length):
    return jnp.arange(text.shape[-1])[None, :] < length[:, None]


def _pow_table(p: np.uint32, n: int) -> np.ndarray:
    out = np.ones(n + 1, np.uint32)
    for i in range(1, n + 1):
        out[i] = np.uint32((int(out[i - 1]) * int(p)) % 2**32)
    return out


def _span_hash(text, start, end, p: np.uint32):
    """Polynomial hash (mod 2**32) of text[b, start:end] for every (b, k): start/end int32 [B, K]."""
    n = text.shape[1]
    pw = jnp.asarray(_pow_table(p, n))
    inv = jnp.asarray(_pow_table(np.uint32(pow(int(p), -1, 2**32)), n))
    terms = text.astype(jnp.uint32) * pw[None, :n]
    prefix = jnp.concatenate([jnp.zeros_like(terms[:, :1]), jnp.cumsum(terms, axis=1, dtype=jnp.uint32)], axis=1)
    diff = jnp.take_along_axis(prefix, end, axis=1) - jnp.take_along_axis(prefix, start, axis=1)
    return diff * inv[jnp.clip(start, 0, n)]


def _clipped_overlap(hyp_id, hyp_ok, ref_id, ref_ok, distinct: bool = False):
    """Sum over distinct hypothesis items of min(count in hyp, count in ref) (distinct=True: of 1 when the
    reference holds the item, i.e. the size of the set intersection); items compared by all id parts.
    hyp_id: tuple of [B, H] arrays, hyp_ok bool [B, H]; ref likewise [B, R].

    Sort-based, O(L log L) time and O(L) memory per row: hypothesis and reference items are sorted together
    (invalid ones last), then the k-th copy of an item in the hypothesis counts when the reference holds
    more than k copies.
    """
    keys = [jnp.concatenate([h, r], axis=1) for h, r in zip(hyp_id, ref_id)]
    tag = jnp.concatenate([jnp.where(hyp_ok, 1, 3), jnp.where(ref_ok, 2, 3)], axis=1).astype(jnp.int32)
    invalid = (tag == 3).astype(jnp.int32)
    invalid, *keys, tag = jax.lax.sort((invalid, *keys, tag), dimension=1, num_keys=1 + len(keys))
    n = tag.shape[1]
    idx = jnp.arange(n)[None, :]
    differs = invalid[:, 1:] != invalid[:, :-1]
    for k in keys:
        differs = differs | (k[:, 1:] != k[:, :-1])
    first = jnp.pad(differs, ((0, 0), (1, 0)), constant_values=True)  # first element of its run
    last = jnp.pad(differs, ((0, 0), (0, 1)), constant_values=True)  # last element of its run
    run_start = jax.lax.cummax(jnp.where(first, idx, 0), axis=1)
    run_end = jax.lax.cummin(jnp.where(last, idx, n - 1), axis=1, reverse=True)
    is_hyp, is_ref = tag == 1, tag == 2
    hyp_before = jnp.cumsum(is_hyp, axis=1) - is_hyp  # exclusive prefix counts
    ref_before = jnp.cumsum(is_ref, axis=1) - is_ref
    rank = hyp_before - jnp.take_along_axis(hyp_before, run_start, axis=1)  # k-th copy in the hypothesis
    ref_count = jnp.take_along_axis(ref_before + is_ref, run_end, axis=1) - jnp.take_along_axis(
        ref_before, run_start, axis=1
    )
    hit = (rank == 0) & (ref_count > 0) if distinct else rank < ref_count
    return jnp.sum(is_hyp & hit, axis=1)


def _char_ngrams(text, length, n):
    """Exact uint32 codes of the character n-grams (n <= 4) starting at each position, and their validity."""
    t = text.astype(jnp.uint32)
    code = jnp.zeros_like(t)
    for k in range(n):
        code = (code << 8) | jnp.pad(t[:, k:], ((0, 0), (0, k)))
    ok = jnp.arange(text.shape[1])[None, :] + n <= length[:, None]
    return (code,), ok


def _words(text, length):
    """Word ids (two hashes + length) at each word's last byte; words = maximal [a-z0-9]+ runs of lower(text)."""
    t = lower(text)
    is_word = (((t >= ord("a")) & (t <= ord("z"))) | ((t >= ord("0")) & (t <= ord("9")))) & _valid(text, length)
    pos = jnp.arange(text.shape[1])[None, :]
    start = jax.lax.cummax(jnp.where(~is_word, pos + 1, 0), axis=1)  # first byte of the current run
    nxt = jnp.pad(is_word[:, 1:], ((0, 0), (0, 1)))
    end_here = is_word & ~nxt
    start_i = start.astype(jnp.int32)
    end_i = jnp.broadcast_to(pos + 1, start.shape).astype(jnp.int32)
    ids = (_span_hash(t, start_i, end_i, _P1), _span_hash(t, start_i, end_i, _P2), end_i - start_i)
    return ids, end_here


def _precision(overlap, total, smooth):
    total = jnp.maximum(total, 1)
    return jnp.where(smooth, (overlap + 1) / (total + 1), overlap / total)


def _bleu(gram_fn, hyp, hyp_len, ref, ref_len, unit_hyp, unit_ref, weights):
    """nltk sentence_bleu([ref], hyp, weights, method2) over the units gram_fn yields (chars or words)."""
    logs = []
    first_match = None
    for n, w in enumerate(weights, start=1):
        (h_id, h_ok), (r_id, r_ok) = gram_fn(hyp, hyp_len, n), gram_fn(ref, ref_len, n)
        overlap = _clipped_overlap(h_id, h_ok, r_id, r_ok)
        total = jnp.sum(h_ok, axis=1)
        if n == 1:
            first_match = overlap
        p = _precision(overlap, total, n > 1)
        logs.append(w * jnp.log(jnp.maximum(p, 1e-30)))
    bp = jnp.where(
        unit_hyp > unit_ref, 1.0, jnp.where(unit_hyp == 0, 0.0, jnp.exp(1.0 - unit_ref / jnp.maximum(unit_hyp, 1)))
    )
    return jnp.where(first_match > 0, bp * jnp.exp(sum(logs)), 0.0)


def char_bleu(hyp, hyp_len, ref, ref_len, weights=(0.25, 0.25, 0.25, 0.25)) -> jax.Array:
    """Character-level BLEU exactly as the published reward computes it (raw strings into nltk)."""
    return _bleu(_char_ngrams, hyp, hyp_len, ref, ref_len, hyp_len, ref_len, weights)


def _word_ngrams(text, length, n):
    """Word n-gram ids starting at each word index (words compacted to the front) and their validity."""
    ids, ends = _words(text, length)
    width = ends.shape[1]
    src = kth_true(ends, width)  # [B, L] k-th word's last byte
    table = [gather_or(i, src) for i in ids]
    parts = tuple(jnp.pad(t[:, k:], ((0, 0), (0, k))) for k in range(n) for t in table)
    ok = jnp.arange(width)[None, :] + n <= jnp.sum(ends, axis=1)[:, None]
    return parts, ok


def word_bleu(hyp, hyp_len, ref, ref_len, weights=(0.25, 0.25, 0.25, 0.25)) -> jax.Array:
    """BLEU over words ([a-z0-9]+ runs, lower-cased) with the same smoothing as the published reward."""
    n_h = jnp.sum(_words(hyp, hyp_len)[1], axis=1)
    n_r = jnp.sum(_words(ref, ref_len)[1], axis=1)
    return _bleu(_word_ngrams, hyp, hyp_len, ref, ref_len, n_h, n_r, weights)


def _rouge1_f(token_fn, hyp, hyp_len, ref, ref_len) -> jax.Array:
    """ROUGE-1 F over the tokens token_fn(text, length) -> (ids, token-end mask) yields for both sides."""
    h_id, h_ok = token_fn(hyp, hyp_len)
    r_id, r_ok = token_fn(ref, ref_len)
    overlap = _clipped_overlap(h_id, h_ok, r_id, r_ok).astype(jnp.float32)
    n_h, n_r = jnp.sum(h_ok, axis=1), jnp.sum(r_ok, axis=1)
    p, r = overlap / jnp.maximum(n_h, 1), overlap / jnp.maximum(n_r, 1)
    return jnp.where(p + r > 0, 2 * p * r / jnp.maximum(p + r, 1e-30), 0.0)


def rouge1_words(hyp, hyp_len, ref, ref_len) -> jax.Array:
    """ROUGE-1 F over words ([a-z0-9]+ runs of the lower-cased text), no stemming."""
    return _rouge1_f(_words, hyp, hyp_len, ref, ref_len)


def stemmed_words(text, length):
    """rouge_score's tokens with Porter stemming (tokens longer than 3 bytes): ids (two hashes of the stemmed
    token + its length) at each token's last byte, and the token-end mask [B, L]."""
    t = lower(text)
    is_word, start, end_here = porter.word_runs(t, length)
    batch, width = t.shape
    end = jnp.broadcast_to(jnp.arange(1, width + 1, dtype=jnp.int32)[None, :], t.shape)
    slots = porter.long_word_slots(t, length)
    s = slots["n"].shape[1]
    flat = lambda a: a.reshape((batch * s,) + a.shape[2:])
    w, n = porter.stem_slots(*(flat(slots[k]) for k in ("w", "n", "head_len", "head_m", "head_vowel", "prev_vowel")))
    w, n = w.reshape(batch, s, -1).astype(jnp.uint32), n.reshape(batch, s)
    head_end = slots["start"] + slots["head_len"]
    # each long token's stemmed id is read back at its last byte by a gather from its slot (no scatter)
    long_end = end_here & (end - start >= porter.MIN_STEMMED)
    slot = jnp.clip(jnp.cumsum(long_end, axis=1, dtype=jnp.int32) - 1, 0, s - 1)  # [B, L]
    ids = []
    for p in (_P1, _P2):
        pw = jnp.asarray(_pow_table(p, width + w.shape[2]))
        tail = jnp.sum(w * pw[None, None, : w.shape[2]], axis=2, dtype=jnp.uint32)
        stemmed = _span_hash(t, slots["start"], head_end, p) + pw[slots["head_len"]] * tail  # [B, S]
        ids.append(jnp.where(long_end, jnp.take_along_axis(stemmed, slot, axis=1), _span_hash(t, start, end, p)))
    ids.append(jnp.where(long_end, jnp.take_along_axis(slots["head_len"] + n, slot, axis=1), end - start))
    return tuple(ids), end_here


def rouge1_stemmed(hyp, hyp_len, ref, ref_len) -> jax.Array:
    """rouge_score ROUGE-1 F with `use_stemmer=True` (the published definition; see porter.py)."""
    return _rouge1_f(stemmed_words, hyp, hyp_len, ref, ref_len)


def _items(text, length):
    """`|`-separated items (whitespace-stripped, lower-cased) of every row, any number of them: one entry per
    pipe and one for the text end ([B, L + 1]); ids (two hashes + length), validity, and the item count."""
    t = lower(text)
    batch, width = t.shape
    valid = _valid(text, length)
    pipe = (t == ord("|")) & valid
    pos = jnp.arange(width + 1, dtype=jnp.int32)[None, :]
    ends_item = jnp.concatenate([pipe, jnp.zeros((batch, 1), bool)], axis=1) | (pos == length[:, None])
    solid = jnp.pad(valid & ~pipe & ~byte_in(t, WHITESPACE_BYTES), ((0, 0), (0, 1)))  # [B, L + 1]
    # item_start[i]: one past the last pipe before position i (0 when none)
    item_start = jax.lax.cummax(jnp.pad(jnp.where(pipe, pos[:, :width] + 1, 0), ((0, 0), (1, 0))), axis=1)
    next_solid = jax.lax.cummin(jnp.where(solid, pos, width + 1), axis=1, reverse=True)
    last_solid = jax.lax.cummax(jnp.where(solid, pos, -1), axis=1)  # at or before i
    first = jnp.take_along_axis(next_solid, item_start, axis=1)
    before_end = jnp.take_along_axis(jnp.pad(last_solid, ((0, 0), (1, 0)), constant_values=-1), pos, axis=1)
    empty = first >= pos  # no content between the previous pipe and here
    start = jnp.where(empty, 0, first)
    end = jnp.where(empty, 0, before_end + 1)
    tp = jnp.pad(t, ((0, 0), (0, 1)))
    ids = (_span_hash(tp, start, end, _P1), _span_hash(tp, start, end, _P2), end - start)
    return ids, ends_item, jnp.sum(pipe, axis=1) + 1


def list_f1(answer, answer_len, gt, gt_len) -> jax.Array:
    """F1 of items: |distinct answer items also in the ground truth| over the list lengths (any item count)."""
    a_id, a_ok, n_a = _items(answer, answer_len)
    g_id, g_ok, n_g = _items(gt, gt_len)
    common = _clipped_overlap(a_id, a_ok, g_id, g_ok, distinct=True).astype(jnp.float32)
    p, r = common / n_a, common / n_g
    return jnp.where(p + r > 0, 2 * p * r / jnp.maximum(p + r, 1e-30), 0.0)


def short_exact(answer, answer_len, gt, gt_len) -> jax.Array:
    """1.0 when lower(answer) == lower(ground truth) byte for byte."""
    la, lg = answer.shape[1], gt.shape[1]
    width = max(la, lg)
    a = jnp.pad(lower(answer), ((0, 0), (0, width - la)))
    g = jnp.pad(lower(gt), ((0, 0), (0, width - lg)))
    a = jnp.where(_valid(a, answer_len), a, 0)
    g = jnp.where(_valid(g, gt_len), g, 0)
    return ((answer_len == gt_len) & jnp.all(a == g, axis=1)).astype(jnp.float32)


def accuracy_score(answer, answer_len, gt, gt_len, gt_kind, *, bleu: str = "char", rouge: str = "stemmed") -> jax.Array:
    """1.5 x the branch score of each row (float32 [B]); bleu: "char" (published) or "word"; rouge: "stemmed"
    (published: rouge_score tokens, Porter stemmer) or "words" (the same tokens unstemmed, cheaper)."""
    bleu_fn = char_bleu if bleu == "char" else word_bleu
    rouge_fn = rouge1_stemmed if rouge == "stemmed" else rouge1_words
    long = (
        bleu_fn(answer, answer_len, gt, gt_len, (1.0, 0.0, 0.0, 0.0))
        + bleu_fn(answer, answer_len, gt, gt_len, (0.25, 0.25, 0.25, 0.25))
        + rouge_fn(answer, answer_len, gt, gt_len)
    ) / 3.0
    score = jnp.where(
        gt_kind == KIND_LIST,
        list_f1(answer, answer_len, gt, gt_len),
        jnp.where(gt_kind == KIND_SHORT, short_exact(answer, answer_len, gt, gt_len), long),
    )
    return (1.5 * jnp.where(gt_kind == KIND_LONG, long, score)).astype(jnp.float32)
