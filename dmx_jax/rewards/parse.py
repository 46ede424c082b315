"""Jitted parsing of completions held as byte arrays (see text_bytes): the published format check, the
last-\\boxed{} answer, the first think block, and the cited `[a, b, c, d]` boxes with the coordinate reward.

All functions take `text uint8 [B, L], text_len int32 [B]` that is ALREADY tag-normalised
(text_bytes.normalise_tags), exactly as the published reward scores the normalised string; `parse_completions`
does the normalisation and everything else in one call. Results equal paper.py on ASCII text (tested); on
non-ASCII text the differences are the ones text_bytes lists (bytes, ASCII-only whitespace and digits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.rewards import paper
from dmx_jax.rewards.text_bytes import (
    first_index,
    is_whitespace,
    kth_true,
    last_index,
    normalise_tags,
    occurrences,
    positions,
    valid_mask,
)

THINK_OPEN, THINK_CLOSE, BOX_OPEN = (s.encode() for s in (paper.THINK_OPEN, paper.THINK_CLOSE, paper.BOX_OPEN))
NO_BOX_ANSWER = paper.NO_BOX_ANSWER.encode()


def format_score(text: jax.Array, text_len: jax.Array) -> jax.Array:
    """float32 [B]: 1 iff the text is `<think>` .. `</think>` .. `\\boxed{` .. `}` .. (earliest pieces suffice)."""
    starts = occurrences(text, text_len, THINK_OPEN)[:, 0]
    close = first_index(occurrences(text, text_len, THINK_CLOSE), len(THINK_OPEN))
    box = first_index(occurrences(text, text_len, BOX_OPEN), close + len(THINK_CLOSE))
    brace = first_index((text == ord("}")) & valid_mask(text, text_len), box + len(BOX_OPEN))
    return (starts & (brace < text.shape[1])).astype(jnp.float32)


def think_block_span(text: jax.Array, text_len: jax.Array):
    """(start, end, found) [B]: content of the first `<think>` .. first later `</think>` (re.findall(...)[0])."""
    length = text.shape[1]
    open_at = first_index(occurrences(text, text_len, THINK_OPEN))
    start = open_at + len(THINK_OPEN)
    end = first_index(occurrences(text, text_len, THINK_CLOSE), start)
    found = (open_at < length) & (end < length)
    return jnp.where(found, start, 0), jnp.where(found, end, 0), found


def boxed_answer_span(text: jax.Array, text_len: jax.Array):
    """(start, end, found) [B]: the stripped content of the last `\\boxed{` up to the `}` that closes it.

    found is False when there is no `\\boxed{` or the last one never closes (answer "None"); start == end
    when the content is empty or all whitespace (answer " ").
    """
    valid, idx = valid_mask(text, text_len), positions(text)
    body = last_index(occurrences(text, text_len, BOX_OPEN)) + len(BOX_OPEN)  # [B]
    in_body = valid & (idx >= body[:, None])
    step = (text == ord("{")).astype(jnp.int32) - (text == ord("}")).astype(jnp.int32)
    depth = jnp.cumsum(jnp.where(in_body, step, 0), axis=1)
    close = first_index(in_body & (depth == -1))
    found = (body >= len(BOX_OPEN)) & (close < text.shape[1])
    solid = in_body & (idx < close[:, None]) & ~is_whitespace(text)
    start = jnp.minimum(first_index(solid), close)
    end = jnp.maximum(last_index(solid) + 1, start)
    return jnp.where(found, start, 0), jnp.where(found, end, 0), found


def boxed_answer(text: jax.Array, text_len: jax.Array, max_len: int | None = None):
    """(answer uint8 [B, La], answer_len int32 [B]) exactly as the accuracy branches see it: the stripped last
    boxed content, b"None" without a closed last box, b" " when empty. La = max_len (default L, never
    truncates); a longer answer is cut to La."""
    length = text.shape[1] if max_len is None else int(max_len)
    if length < len(NO_BOX_ANSWER):
        raise ValueError(f"boxed_answer: max_len must be >= {len(NO_BOX_ANSWER)}, got {max_len}")
    start, end, found = boxed_answer_span(text, text_len)
    n = jnp.minimum(end - start, length)
    cols = jnp.arange(length, dtype=jnp.int32)[None, :]
    src = jnp.clip(start[:, None] + cols, 0, text.shape[1] - 1)
    copied = jnp.where(cols < n[:, None], jnp.take_along_axis(text, src, axis=1), 0)
    none = np.zeros((length,), np.uint8)
    none[: len(NO_BOX_ANSWER)] = np.frombuffer(NO_BOX_ANSWER, np.uint8)
    space = np.zeros((length,), np.uint8)
    space[0] = ord(" ")
    answer = jnp.where(~found[:, None], none, jnp.where((n == 0)[:, None], space, copied))
    answer_len = jnp.where(found, jnp.maximum(n, 1), len(NO_BOX_ANSWER))
    return answer.astype(jnp.uint8), answer_len.astype(jnp.int32)


# -------------------------------------------------------------------------------------- cited boxes
# r'\[([-+]?\d*\.?\d+(?:,\s*[-+]?\d*\.?\d+){3})\]' as a DFA. A match can hold no '[' or ']', so matches
# never overlap and a '[' can simply reset the automaton. States: FAIL, then per number k = 0..3 the
# sub-states START (after '[' or ','; whitespace allowed when k > 0), SIGN, INT (digits), DOT, FRAC (digits
# after the point). A ']' whose preceding state is INT_3 or FRAC_3 ends a match.
_OTHER, _OPEN, _CLOSE, _SPACE, _SIGN, _DIGIT, _DOT, _COMMA = range(8)
_START, _SIGN_S, _INT, _DOT_S, _FRAC = range(5)
_N_STATES = 1 + 4 * 5


def _state(k: int, sub: int) -> int:
    return 1 + 5 * k + sub


def _transition_table() -> np.ndarray:
    """uint8 [8 classes, 21 states] -> next state."""
    table = np.zeros((8, _N_STATES), np.uint8)  # default: FAIL (0)
    table[_OPEN, :] = _state(0, _START)
    for k in range(4):
        nxt = _state(k + 1, _START) if k < 3 else 0
        start, sign, integer, dot, frac = (_state(k, s) for s in range(5))
        if k > 0:
            table[_SPACE, start] = start
        table[_SIGN, start] = sign
        table[_DIGIT, [start, sign, integer]] = integer
        table[_DOT, [start, sign, integer]] = dot
        table[_DIGIT, [dot, frac]] = frac
        table[_COMMA, [integer, frac]] = nxt
    return table


_TRANSITIONS = _transition_table()
# 2^-44 is half an ulp of float64 at 512: float(s) > 512 iff s > 512 + 2^-44 (the tie rounds to even, 512)
_HALF_ULP_DIGITS = np.array([int(c) for c in ("%.44f" % 2.0**-44)[2:]] + [0], np.int32)  # 44 digits, then 0
_POW10_MIN, _POW10_MAX = -46, 39
_MAX_SIGNIFICANT = 31  # mantissa digits kept; more are scaled down (values are float32 anyway)
with np.errstate(over="ignore"):
    _POW10 = (10.0 ** np.arange(_POW10_MIN, _POW10_MAX + 1, dtype=np.float64)).astype(np.float32)  # 1e39 -> inf


def _pow10(e: jax.Array) -> jax.Array:
    return jnp.asarray(_POW10)[jnp.clip(e, _POW10_MIN, _POW10_MAX) - _POW10_MIN]


def _byte_class(text: jax.Array, inside: jax.Array) -> jax.Array:
    c = jnp.full(text.shape, _OTHER, jnp.int32)
    for cls, chars in ((_OPEN, b"["), (_CLOSE, b"]"), (_SIGN, b"+-"), (_DOT, b"."), (_COMMA, b",")):
        for ch in chars:
            c = jnp.where(text == ch, cls, c)
    c = jnp.where((text >= ord("0")) & (text <= ord("9")), _DIGIT, c)
    c = jnp.where(is_whitespace(text), _SPACE, c)
    return jnp.where(inside, c, _OTHER)


def _states_after(byte_class: jax.Array) -> jax.Array:
    """int32 [B, L]: automaton state after each byte, from FAIL, by a parallel prefix over transition maps."""
    maps = jnp.asarray(_TRANSITIONS)[byte_class]  # [B, L, 21]
    prefix = jax.lax.associative_scan(lambda a, b: jnp.take_along_axis(b, a.astype(jnp.int32), axis=-1), maps, axis=1)
    return prefix[..., 0].astype(jnp.int32)


def cited_boxes(text: jax.Array, text_len: jax.Array, max_boxes: int = 8, *, whole_text: bool = False) -> dict:
    """Boxes cited in the first think block, as the published coordinate reward finds them (whole_text=True:
    anywhere in the text, e.g. a grounding answer's box inside \\boxed{}).

    Returns dict(boxes float32 [B, N, 4] (the first N in order, zero padded), box_valid bool [B, N],
    box_over_512 bool [B, N], count int32 [B] (all matches, also past N), over_count int32 [B]).
    `> 512` is decided exactly from the digits with float64 rounding (no float32 on the way);
    values are float32: correctly rounded for numbers with <= 7 significant digits and <= 10 after the point
    (tested on CPU), within a few ulp otherwise, inf beyond the float32 range.
    """
    batch, length = text.shape
    if whole_text:
        start, end = jnp.zeros_like(text_len), text_len
    else:
        start, end, _ = think_block_span(text, text_len)
    idx = positions(text)
    inside = (idx >= start[:, None]) & (idx < end[:, None])
    cls = _byte_class(text, inside)
    after = _states_after(cls)
    before = jnp.pad(after, ((0, 0), (1, 0)))[:, :-1]
    ends_match = (cls == _CLOSE) & ((before == _state(3, _INT)) | (before == _state(3, _FRAC)))

    def at(values, where):  # values [B, L] read at columns `where` in [-1, L]; -1 and L read 0
        padded = jnp.pad(values, ((0, 0), (1, 1)))
        return jnp.take_along_axis(padded, where + 1, axis=1)

    is_delim = (cls == _OPEN) | (cls == _COMMA)
    number_start = jax.lax.cummax(jnp.where(is_delim, idx, -1), axis=1)  # '[' or ',' before
    number_end = jax.lax.cummin(jnp.where((cls == _COMMA) | (cls == _CLOSE), idx, length), axis=1, reverse=True)
    last_open = jax.lax.cummax(jnp.where(cls == _OPEN, idx, -1), axis=1)
    close = jax.lax.cummin(jnp.where(cls == _CLOSE, idx, length), axis=1, reverse=True)
    in_match = at(ends_match.astype(jnp.int32), close).astype(bool) & (at(last_open, close) == last_open)

    sub = (after - 1) % 5
    part = (after - 1) // 5
    digit = text.astype(jnp.int32) - ord("0")
    is_int = in_match & (after > 0) & (sub == _INT)
    is_frac = in_match & (after > 0) & (sub == _FRAC)
    is_digit = is_int | is_frac
    is_minus = in_match & (after > 0) & (sub == _SIGN_S) & (text == ord("-"))

    def count_between(flag, lo, hi):  # number of flagged columns in (lo, hi], lo and hi in [-1, L]
        c = jnp.cumsum(flag, axis=1, dtype=jnp.int32)
        c = jnp.concatenate([jnp.zeros_like(c[:, :1]), c, c[:, -1:]], axis=1)
        return jnp.take_along_axis(c, hi + 1, axis=1) - jnp.take_along_axis(c, lo + 1, axis=1)

    digits_after = count_between(is_digit, idx, number_end)  # digits of the same number after p
    int_after = count_between(is_int, idx, number_end)
    frac_pos = count_between(is_frac, number_start, idx) - 1  # 0-based place after the point
    significant = is_digit & (count_between(is_digit & (digit > 0), number_start, idx) > 0)
    n_significant = count_between(significant, number_start, number_end)
    shift = jnp.maximum(n_significant - _MAX_SIGNIFICANT, 0)  # keeps the mantissa below 1e31
    mantissa = jnp.where(significant & (digit > 0), digit * _pow10(digits_after - shift), 0.0)
    int_value = jnp.where(significant & is_int & (digit > 0), digit * _pow10(int_after), 0.0)
    ref_digit = jnp.asarray(_HALF_ULP_DIGITS)[jnp.clip(frac_pos, 0, 44)]
    differs = is_frac & (digit != ref_digit)
    first_diff = differs & (count_between(differs, number_start, idx) == 1)
    frac_above = first_diff & (digit > ref_digit)

    # per number: segment (close column, part) summed; everything else goes to a dump segment
    seg = jnp.where(in_match & (after > 0), close * 4 + part, 4 * length)
    per_pos = jnp.stack(
        [mantissa, is_frac, is_minus, significant & is_int, int_value, frac_above, significant], axis=-1
    )
    sums = jax.vmap(lambda d, s: jax.ops.segment_sum(d, s, num_segments=4 * length + 1))(
        per_pos.astype(jnp.float32), seg
    )[:, :-1].reshape(batch, length, 4, per_pos.shape[-1])
    mant, frac_digits, minus, n_sig, int_val, above, n_all_sig = (sums[..., i] for i in range(per_pos.shape[-1]))
    frac_shift = jnp.maximum(n_all_sig.astype(jnp.int32) - _MAX_SIGNIFICANT, 0)  # the same shift per number
    sign = jnp.where(minus > 0, -1.0, 1.0)
    values = sign * mant / _pow10(frac_digits.astype(jnp.int32) - frac_shift)  # [B, L, 4]
    over = (minus == 0) & ((n_sig > 3) | ((n_sig == 3) & ((int_val > 512) | ((int_val == 512) & (above > 0)))))
    over_at_close = jnp.any(over, axis=-1) & ends_match  # [B, L]

    close_at = kth_true(ends_match, max_boxes)  # [B, N] the first N closing brackets
    box_valid = close_at < length
    box_close = jnp.where(box_valid, close_at, 0)
    boxes = jnp.take_along_axis(values, box_close[..., None], axis=1)
    return {
        "boxes": jnp.where(box_valid[..., None], boxes, 0.0),
        "box_valid": box_valid,
        "box_over_512": jnp.take_along_axis(over_at_close, box_close, axis=1) & box_valid,
        "count": jnp.sum(ends_match, axis=1, dtype=jnp.int32),
        "over_count": jnp.sum(over_at_close, axis=1, dtype=jnp.int32),
    }


# float32(m / 20) for every reachable m = n_ok - 4 * n_over below the cap, by table: XLA rewrites division by
# a scalar into multiplication by its reciprocal, which is not correctly rounded
_TABLE_MIN_M = -4 * 2048
_M_OVER_20 = (np.arange(_TABLE_MIN_M, 3, dtype=np.float64) / 20).astype(np.float32)


def coordinate_score(count: jax.Array, over_count: jax.Array) -> jax.Array:
    """float32 [B]: 0.05 per box within 512, -0.2 per box beyond, capped at 0.15; i.e. m / 20 for the integer
    m = count - 5 * over_count, correctly rounded (more than 2048 penalised boxes: within 1 ulp)."""
    m = count - 5 * over_count
    exact = jnp.asarray(_M_OVER_20)[jnp.clip(m, _TABLE_MIN_M, 2) - _TABLE_MIN_M]
    value = jnp.where(m >= _TABLE_MIN_M, exact, m.astype(jnp.float32) * jnp.float32(0.05))
    return jnp.where(m >= 3, jnp.float32(paper.COORDINATE_CAP), value)


def parse_completions(
    text: jax.Array, text_len: jax.Array, max_boxes: int = 8, max_answer_len: int | None = None
) -> dict:
    """Everything the paper reward reads from raw completions: tag-normalise, then format, answer, boxes,
    coordinate. Returns dict(text, text_len (normalised), format, answer, answer_len, answer_cut (bool [B]: the
    boxed answer is longer than max_answer_len and was cut), coordinate, **cited_boxes)."""
    text, text_len = normalise_tags(text, text_len)
    answer, answer_len = boxed_answer(text, text_len, max_answer_len)
    start, end, found = boxed_answer_span(text, text_len)
    answer_cut = found & (end - start > answer.shape[1])
    boxes = cited_boxes(text, text_len, max_boxes)
    return {
        "text": text,
        "text_len": text_len,
        "format": format_score(text, text_len),
        "answer": answer,
        "answer_len": answer_len,
        "answer_cut": answer_cut,
        "coordinate": coordinate_score(boxes["count"], boxes["over_count"]),
        **boxes,
    }
