"""rouge_score's tokenisation and nltk's Porter stemmer (NLTK_EXTENSIONS mode) as array operations on bytes.

rouge_score 0.1.2 `tokenize(text, PorterStemmer())`: lower-case, every non-[a-z0-9] character is a separator,
tokens longer than 3 characters are stemmed by `nltk.stem.porter.PorterStemmer().stem` (its default mode,
NLTK_EXTENSIONS: the irregular-form pool, 'ies'/'ied' on 4-letter words, 'alli' first, 'fulli', 'logi',
y -> i only after a consonant, the two-letter *o rule).

Words become fixed-width slots: the last `WINDOW` bytes of each word, left-aligned, plus what the rules
need from the part before (its length, measure, whether it holds a vowel, whether its last letter is a
vowel). Every rule only rewrites the tail: all eight steps together remove at most 24 characters and look
at most 3 characters before the cut (step 5a's *o), so with WINDOW = 32 a rule never reaches the head, and
the measure of any stem is head measure + the vc pairs inside the slot. A step is one pass over the slot
(consonant flags, measure prefix sums) plus O(1) gathers per rule; rule lists keep nltk's semantics (the
first rule whose suffix matches decides; a failed condition leaves the word unchanged).

Words are identified by two 32-bit polynomial hashes plus their length; a stemmed word's hash is composed
from the head's hash over the text and the rewritten slot's hash, so it equals the hash of the stem's bytes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.rewards.text_bytes import byte_in, gather_or, kth_true

WINDOW = 32  # bytes of each word's tail kept in its slot (see the module docstring)
MIN_STEMMED = 4  # rouge_score stems only tokens longer than 3 characters
_REPL_WIDTH = 4  # longest replacement ('tion', 'ence', 'ance', 'able', ...)

# nltk's irregular forms: word -> stem
POOL = {
    "sky": "sky",
    "skies": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "news": "news",
    "innings": "inning",
    "inning": "inning",
    "outings": "outing",
    "outing": "outing",
    "cannings": "canning",
    "canning": "canning",
    "howe": "howe",
    "proceed": "proceed",
    "exceed": "exceed",
    "succeed": "succeed",
}


def _u8(s: str) -> tuple[int, ...]:
    return tuple(s.encode())


_TAIL = 8  # positions n-8 .. n-1 are all any rule or condition reads

# how a rule matches
M_NONE, M_SUFFIX, M_SUFFIX_LEN4, M_DOUBLE, M_ALWAYS = range(5)
# its condition, on the stem without the last k bytes (m = measure, *o = cvc, as nltk names them)
(C_NONE, C_M0, C_M1, C_ION, C_LOGI, C_Y, C_NOT_LSZ, C_E, C_5A, C_VOWEL) = range(10)

_STEP2 = (
    ("ational", "ate"),
    ("tional", "tion"),
    ("enci", "ence"),
    ("anci", "ance"),
    ("izer", "ize"),
    ("bli", "ble"),
    ("alli", "al"),
    ("entli", "ent"),
    ("eli", "e"),
    ("ousli", "ous"),
    ("ization", "ize"),
    ("ation", "ate"),
    ("ator", "ate"),
    ("alism", "al"),
    ("iveness", "ive"),
    ("fulness", "ful"),
    ("ousness", "ous"),
    ("aliti", "al"),
    ("iviti", "ive"),
    ("biliti", "ble"),
    ("fulli", "ful"),
)
_STEP3 = (("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"), ("ful", ""), ("ness", ""))
_STEP4 = (
    "al",
    "ance",
    "ence",
    "er",
    "ic",
    "able",
    "ible",
    "ant",
    "ement",
    "ment",
    "ent",
    "ion",
    "ou",
    "ism",
    "ate",
    "iti",
    "ous",
    "ive",
    "ize",
)

# nltk's steps as rule lists (suffix, match, k dropped, replacement, condition, starts step 1b's second part);
# a pass marked gated runs only on the words whose previous pass set the flag
_S = M_SUFFIX
PASSES = (
    (
        False,
        [
            ("ies", M_SUFFIX_LEN4, 3, "ie", C_NONE),
            ("sses", _S, 4, "ss", C_NONE),
            ("ies", _S, 3, "i", C_NONE),
            ("ss", _S, 2, "ss", C_NONE),
            ("s", _S, 1, "", C_NONE),
        ],
    ),  # 1a
    (
        False,
        [
            ("ied", M_SUFFIX_LEN4, 3, "ie", C_NONE),
            ("ied", _S, 3, "i", C_NONE),
            ("eed", _S, 3, "ee", C_M0),
            ("ed", _S, 2, "", C_VOWEL, True),
            ("ing", _S, 3, "", C_VOWEL, True),
        ],
    ),  # 1b
    (
        True,
        [
            ("at", _S, 2, "ate", C_NONE),
            ("bl", _S, 2, "ble", C_NONE),
            ("iz", _S, 2, "ize", C_NONE),
            ("", M_DOUBLE, 1, "", C_NOT_LSZ),
            ("", M_ALWAYS, 0, "e", C_E),
        ],
    ),  # 1b, 2nd
    (False, [("y", _S, 1, "i", C_Y)]),  # 1c
    (False, [("alli", _S, 4, "al", C_M0)]),  # 2, NLTK: 'alli' first
    (False, [(suf, _S, len(suf), rep, C_M0) for suf, rep in _STEP2] + [("logi", _S, 4, "log", C_LOGI)]),  # 2
    (False, [(suf, _S, len(suf), rep, C_M0) for suf, rep in _STEP3]),  # 3
    (False, [(suf, _S, len(suf), "", C_ION if suf == "ion" else C_M1) for suf in _STEP4]),  # 4
    (False, [("e", _S, 1, "", C_5A)]),  # 5a
    (False, [("ll", _S, 1, "", C_M1)]),  # 5b
)
_REPLS = sorted({r[3] for _, rules in PASSES for r in rules})


def _tables():
    """PASSES as stacked arrays [P, R, ...] (R = the longest rule list, padded with rules that never match)."""
    n_pass, n_rule = len(PASSES), max(len(rules) for _, rules in PASSES)
    t = {
        "suffix": np.zeros((n_pass, n_rule, _TAIL), np.uint8),
        "suffix_len": np.zeros((n_pass, n_rule), np.int32),
        "match": np.full((n_pass, n_rule), M_NONE, np.int32),
        "k": np.zeros((n_pass, n_rule), np.int32),
        "repl": np.zeros((n_pass, n_rule), np.int32),
        "cond": np.zeros((n_pass, n_rule), np.int32),
        "flag": np.zeros((n_pass, n_rule), bool),
        "gated": np.array([g for g, _ in PASSES]),
    }
    t["suffix_code"] = np.zeros((n_pass, n_rule, 2), np.uint32)
    t["suffix_mask"] = np.zeros((n_pass, n_rule, 2), np.uint32)
    for i, (_, rules) in enumerate(PASSES):
        for j, (suf, match, k, repl, cond, *flag) in enumerate(rules):
            code = _u8(suf)
            t["suffix"][i, j, _TAIL - len(code) :] = code
            t["suffix_len"][i, j], t["match"][i, j], t["k"][i, j] = len(code), match, k
            t["repl"][i, j], t["cond"][i, j], t["flag"][i, j] = _REPLS.index(repl), cond, bool(flag and flag[0])
            mask = np.zeros((_TAIL,), np.uint8)
            mask[_TAIL - len(code) :] = 255
            for half in range(2):
                t["suffix_code"][i, j, half] = int.from_bytes(bytes(t["suffix"][i, j, 4 * half : 4 * half + 4]), "big")
                t["suffix_mask"][i, j, half] = int.from_bytes(bytes(mask[4 * half : 4 * half + 4]), "big")
    return t


def _repl_table():
    """The replacement strings: bytes [K, 4], length, consonant flags, vc pairs and vowels up to each byte."""
    n = len(_REPLS)
    out = (
        np.zeros((n, _REPL_WIDTH), np.uint8),
        np.zeros((n,), np.int32),
        np.zeros((n, _REPL_WIDTH), bool),
        np.zeros((n, _REPL_WIDTH), np.int32),
        np.zeros((n, _REPL_WIDTH), np.int32),
    )
    for i, r in enumerate(_REPLS):
        assert "y" not in r and len(r) <= _REPL_WIDTH  # so a rewrite never changes an earlier flag
        cons = [ch not in "aeiou" for ch in r]
        out[0][i, : len(r)], out[1][i] = _u8(r), len(r)
        for j in range(len(r)):
            out[2][i, j] = cons[j]
            out[3][i, j] = sum(1 for q in range(1, j + 1) if cons[q] and not cons[q - 1])
            out[4][i, j] = sum(1 for q in range(j + 1) if not cons[q])
    return out


def _initial_state(w, n, head_len, head_m, head_vowel, prev_vowel):
    """nltk's consonant flags of the slots and the measure / vowel prefix counts m, v [N, W + 1] (with the head)."""
    idx = jnp.arange(w.shape[1], dtype=jnp.int32)[None, :]
    vowel = byte_in(w, b"aeiou")
    is_y = w == ord("y")
    run_start = jax.lax.cummax(jnp.where(is_y, 0, idx + 1), axis=1)  # first y of the current run
    before = jnp.take_along_axis(jnp.concatenate([prev_vowel[:, None], vowel], axis=1), run_start, axis=1)
    live = idx < n[:, None]
    cons = jnp.where(is_y, before ^ ((idx - run_start) % 2 == 1), ~vowel) & live
    head_last_vowel = (head_len > 0) & prev_vowel
    prev_v = jnp.concatenate([head_last_vowel[:, None], ~cons[:, :-1]], axis=1)
    zero = jnp.zeros_like(n)[:, None]
    m = head_m[:, None] + jnp.concatenate([zero, jnp.cumsum(prev_v & cons & live, 1, jnp.int32)], 1)
    v = head_vowel[:, None].astype(jnp.int32) + jnp.concatenate([zero, jnp.cumsum(~cons & live, 1, jnp.int32)], 1)
    return cons, m, v


def _pass(state, table, head_len, head_last_vowel, active):
    """One rule list (nltk `_apply_rule_list`) over all slots: the first rule whose match holds decides; its
    condition picks rewrite (drop k bytes, append the replacement) or keep. Flags depend only on the left
    context and replacements hold no 'y', so the flags before the cut stay valid and the new bytes' flags
    come from the replacement table."""
    w, cons, m, v, n, flag = state
    width = w.shape[1]
    cols = n[:, None] + jnp.arange(-_TAIL, 0, dtype=jnp.int32)[None, :]
    c = jnp.clip(cols, 0, width - 1)
    tw = jnp.where(cols >= 0, jnp.take_along_axis(w, c, axis=1), 0)  # bytes n-8 .. n-1
    tc = jnp.take_along_axis(cons, c, axis=1) & (cols >= 0)
    c1 = jnp.clip(jnp.concatenate([cols, n[:, None]], axis=1), 0, width)
    tm, tv = jnp.take_along_axis(m, c1, axis=1), jnp.take_along_axis(v, c1, axis=1)  # m, v at n-8 .. n
    full = head_len + n  # [N]
    # suffix match on packed tails: bytes n-8 .. n-1 as two big-endian uint32, masked to the suffix length
    packed = tw.astype(jnp.uint32).reshape(-1, 2, 4)
    packed = (packed[..., 0] << 24) | (packed[..., 1] << 16) | (packed[..., 2] << 8) | packed[..., 3]  # [N, 2]
    suffix_ok = jnp.all((packed[:, None, :] & table["suffix_mask"][None]) == table["suffix_code"][None], axis=-1)
    suffix_ok = suffix_ok & (full[:, None] >= table["suffix_len"][None, :])  # [N, R]
    double = (full >= 2) & (tw[:, -1] == tw[:, -2]) & tc[:, -1]
    match_type = table["match"][None, :]
    match = jnp.where(
        match_type == M_SUFFIX,
        suffix_ok,
        jnp.where(
            match_type == M_SUFFIX_LEN4,
            suffix_ok & (full[:, None] == 4),
            jnp.where(match_type == M_DOUBLE, double[:, None], match_type == M_ALWAYS),
        ),
    )
    gate = active & jnp.where(table["gated"], flag, True)
    match = match & gate[:, None]
    first = jnp.argmax(match, axis=1)  # [N] the deciding rule
    kk, cond_type = table["k"][first], table["cond"][first]
    at = lambda a, j: jnp.take_along_axis(a, jnp.clip(_TAIL - j, 0, a.shape[1] - 1)[:, None], axis=1)[:, 0]
    mk = at(tm, kk)
    last = at(tw, kk + 1)  # the stem's last byte
    total = full - kk
    cvc = (
        (total >= 3)
        & at(tc, kk + 3)
        & ~at(tc, kk + 2)
        & at(tc, kk + 1)
        & (last != ord("w"))
        & (last != ord("x"))
        & (last != ord("y"))
    )
    cvc = cvc | ((total == 2) & ~at(tc, kk + 2) & at(tc, kk + 1))
    dropped = at(tw, kk)  # the byte a 1-byte rule drops (*d: the double)
    conds = jnp.stack(
        [
            jnp.ones_like(mk, bool),
            mk > 0,
            mk > 1,
            (mk > 1) & ((last == ord("s")) | (last == ord("t"))),
            at(tm, kk - 1) > 0,
            (total > 1) & at(tc, kk + 1),
            (dropped != ord("l")) & (dropped != ord("s")) & (dropped != ord("z")),
            (mk == 1) & cvc,
            (mk > 1) | ((mk == 1) & ~cvc),
            at(tv, kk) > 0,
        ],
        axis=-1,
    )  # [N, C]
    apply = jnp.any(match, axis=1) & jnp.take_along_axis(conds, cond_type[:, None], axis=1)[:, 0]
    r_bytes, r_len, r_cons, r_pairs, r_vowels = (jnp.asarray(a)[table["repl"][first]] for a in _repl_table())
    cut = n - kk
    prev_vowel = jnp.where(cut > 0, ~at(tc, kk + 1), head_last_vowel)
    idx = jnp.arange(width, dtype=jnp.int32)[None, :]
    rel = idx - cut[:, None]
    put = apply[:, None] & (rel >= 0) & (rel < r_len[:, None])
    j = jnp.clip(rel, 0, _REPL_WIDTH - 1)
    w = jnp.where(put, jnp.take_along_axis(r_bytes, j, axis=1), w)
    cons = jnp.where(put, jnp.take_along_axis(r_cons, j, axis=1), cons)
    bridge = (prev_vowel & r_cons[:, 0]).astype(jnp.int32)
    m_new = (at(tm, kk) + bridge)[:, None] + jnp.take_along_axis(r_pairs, j, axis=1)
    v_new = at(tv, kk)[:, None] + jnp.take_along_axis(r_vowels, j, axis=1)
    put1 = jnp.pad(put, ((0, 0), (1, 0)))  # m[p + 1] covers slot[:p + 1]
    m = jnp.where(put1, jnp.pad(m_new, ((0, 0), (1, 0))), m)
    v = jnp.where(put1, jnp.pad(v_new, ((0, 0), (1, 0))), v)
    n = jnp.where(apply, cut + r_len, n)
    return w, cons, m, v, n, apply & table["flag"][first]


def _pool_table():
    width = 8
    words = np.zeros((len(POOL), width), np.uint8)
    stems = np.zeros((len(POOL), width), np.uint8)
    for i, (k, v) in enumerate(POOL.items()):
        assert len(k) <= width
        words[i, : len(k)], stems[i, : len(v)] = _u8(k), _u8(v)
    packed = words.reshape(len(POOL), 2, 4).astype(np.uint32)
    packed = (packed[..., 0] << 24) | (packed[..., 1] << 16) | (packed[..., 2] << 8) | packed[..., 3]
    return (
        packed,
        np.array([len(k) for k in POOL], np.int32),
        stems,
        np.array([len(v) for v in POOL.values()], np.int32),
    )


def stem_slots(w, n, head_len, head_m, head_vowel, prev_vowel):
    """Porter-stem word slots: w uint8 [N, W] (the word's last <= W lower-case bytes, left-aligned, zero
    beyond n), n int32 [N] slot length, head_len int32 [N] bytes before the slot, head_m int32 [N] their
    measure, head_vowel bool [N] whether they hold a vowel, prev_vowel bool [N] True when there is no head or
    its last letter is a vowel (nltk's consonant rule). Returns the stemmed slots (w, n); the head is never
    rewritten. Words must be longer than 2 bytes (rouge_score passes only tokens longer than 3). The ten
    rule lists run as one scanned pass over stacked rule tables (one compiled body)."""
    if w.shape[1] < WINDOW:
        w = jnp.pad(w, ((0, 0), (0, WINDOW - w.shape[1])))
    idx = jnp.arange(w.shape[1], dtype=jnp.int32)[None, :]
    pool_code, pool_len, pool_stems, pool_stem_len = (jnp.asarray(a) for a in _pool_table())
    b = jnp.where(idx[:, :8] < n[:, None], w[:, :8], 0).astype(jnp.uint32).reshape(-1, 2, 4)
    code = (b[..., 0] << 24) | (b[..., 1] << 16) | (b[..., 2] << 8) | b[..., 3]  # [N, 2]
    pool_hit = (
        (n[:, None] == pool_len[None, :])
        & (head_len == 0)[:, None]
        & jnp.all(code[:, None, :] == pool_code[None, :, :], axis=-1)
    )  # [N, P]
    in_pool = jnp.any(pool_hit, axis=1)
    cons, m, v = _initial_state(w, n, head_len, head_m, head_vowel, prev_vowel)
    head_last_vowel = (head_len > 0) & prev_vowel
    tables = {k: jnp.asarray(a) for k, a in _tables().items()}

    def body(state, table):
        return _pass(state, table, head_len, head_last_vowel, ~in_pool), None

    state = (w, cons, m, v, n, jnp.zeros_like(in_pool))
    (w, _, _, _, n, _), _ = jax.lax.scan(body, state, tables)
    k = jnp.argmax(pool_hit, axis=1)
    stem_w = jnp.pad(pool_stems[k], ((0, 0), (0, w.shape[1] - pool_stems.shape[1])))
    out_w = jnp.where(in_pool[:, None], stem_w, w)
    out_n = jnp.where(in_pool, pool_stem_len[k], n)
    return jnp.where(idx < out_n[:, None], out_w, 0).astype(jnp.uint8), out_n


# ------------------------------------------------------------------------------------------- text level
def word_runs(text, length):
    """rouge_score's tokens on lower-cased bytes: (is_word bool [B, L], start int32 [B, L] first byte of the
    run each position is in, end_here bool [B, L] a token ends at this byte)."""
    is_word = ((text >= ord("a")) & (text <= ord("z"))) | ((text >= ord("0")) & (text <= ord("9")))
    is_word = is_word & (jnp.arange(text.shape[1])[None, :] < length[:, None])
    pos = jnp.arange(text.shape[1], dtype=jnp.int32)[None, :]
    start = jax.lax.cummax(jnp.where(~is_word, pos + 1, 0), axis=1)
    end_here = is_word & ~jnp.pad(is_word[:, 1:], ((0, 0), (0, 1)))
    return is_word, start, end_here


def _consonants(text, is_word, start):
    """nltk consonant flags of every byte, words taken separately (a y starting a word is a consonant)."""
    pos = jnp.arange(text.shape[1], dtype=jnp.int32)[None, :]
    vowel = byte_in(text, b"aeiou")
    is_y = text == ord("y")
    run_start = jax.lax.cummax(jnp.where(is_y, 0, pos + 1), axis=1)
    before_in_word = run_start > start
    before = jnp.take_along_axis(jnp.pad(vowel, ((0, 0), (1, 0))), run_start, axis=1) | ~before_in_word
    return jnp.where(is_y, before ^ ((pos - run_start) % 2 == 1), ~vowel) & is_word


def long_word_slots(text, length, n_slots: int | None = None):
    """The tokens rouge_score stems (longer than 3 bytes) of lower-cased text uint8 [B, L], gathered into
    slots: dict(w uint8 [B, S, W], n, head_len, head_m, head_vowel, prev_vowel int/bool [B, S], start, end
    int32 [B, S] the token's span in the text, valid bool [B, S]). S defaults to the most such tokens
    L bytes can hold, (L + 1) // 5, so no token is ever left out."""
    batch, width = text.shape
    s = max(1, (width + 1) // 5) if n_slots is None else n_slots
    is_word, start, end_here = word_runs(text, length)
    pos = jnp.arange(width, dtype=jnp.int32)[None, :]
    long_end = end_here & (pos + 1 - start >= MIN_STEMMED)
    last = kth_true(long_end, s)  # [B, S] last byte of each long token
    valid = last < width
    end = jnp.where(valid, last + 1, 0)
    w_start = gather_or(start, last)
    total = end - w_start
    n = jnp.where(valid, jnp.minimum(total, WINDOW), 0)
    head_end = end - n
    cols = head_end[:, :, None] + jnp.arange(WINDOW, dtype=jnp.int32)[None, None, :]
    w = jnp.take_along_axis(text, jnp.clip(cols, 0, width - 1).reshape(batch, -1), axis=1).reshape(batch, s, WINDOW)
    w = jnp.where(jnp.arange(WINDOW)[None, None, :] < n[:, :, None], w, 0)
    cons = _consonants(text, is_word, start)
    prev = jnp.pad(cons, ((0, 0), (1, 0)))[:, :-1]
    pair = cons & ~prev & is_word & (pos > start)  # a vc pair ends here, inside one word
    zero = jnp.zeros((batch, 1), jnp.int32)
    pairs = jnp.concatenate([zero, jnp.cumsum(pair, axis=1, dtype=jnp.int32)], axis=1)  # [B, L + 1]
    vowels = jnp.concatenate([zero, jnp.cumsum(~cons & is_word, axis=1, dtype=jnp.int32)], axis=1)
    at = lambda a, i: jnp.take_along_axis(a, jnp.clip(i, 0, a.shape[1] - 1), axis=1)
    head_len = head_end - w_start
    last_cons = at(cons, head_end - 1)
    return {
        "w": w,
        "n": n,
        "head_len": head_len,
        "head_m": at(pairs, head_end) - at(pairs, w_start),
        "head_vowel": (at(vowels, head_end) - at(vowels, w_start)) > 0,
        "prev_vowel": (head_len == 0) | ~last_cons,
        "start": w_start,
        "end": end,
        "valid": valid,
    }
