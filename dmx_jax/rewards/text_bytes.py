"""Text as UTF-8 byte arrays for the jitted rewards: token ids -> bytes, host encoding, tag-whitespace
normalisation and stable compaction.

Representation: `text uint8 [B, L]` left-aligned and zero padded beyond `text_len int32 [B]`. Every jitted
function here is pure jnp with static shapes (no host callbacks) and works per row, so it vmaps and shards
over the batch.

Characters are bytes: ASCII text behaves exactly like the Python-string reward (`paper.py`). Whitespace is
the ASCII set that Python's str `\\s` / `str.isspace` / `str.split` use (space, \\t, \\n, \\r, \\x0b, \\x0c,
\\x1c-\\x1f); the Unicode-only spaces (NBSP, NEL, em space, ...) are multi-byte in UTF-8 and are not
whitespace here.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.rewards import paper

WHITESPACE_BYTES = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
TAG_BYTES = b"<>/"  # the characters the published pre-normalisation strips whitespace around
# Qwen2 / Qwen2.5 byte-level BPE: 151,643 ranked tokens (+ 22 specials), the longest a run of 128 spaces, mean
# 6.4 bytes; read from the published rank file. Sets the reward's uncapped byte budget at real scale.
QWEN2_5_LONGEST_TOKEN_BYTES = 128


# ----------------------------------------------------------------------------------------------- host side
def token_bytes_table(tokenizer, vocab_size: int) -> dict[str, np.ndarray]:
    """dict(bytes=uint8 [V, K], length=int32 [V]) from `tokenizer.token_bytes(i)`.

    The special tokens (`tokenizer.special_ids`: <|endoftext|>, <|im_start|>, <|im_end|>, vision tokens) and
    ids beyond the tokenizer's vocabulary (embedding padding) decode to zero bytes. K = longest token (>= 1).
    """
    if vocab_size < 1:
        raise ValueError(f"token_bytes_table: vocab_size must be >= 1, got {vocab_size}")
    special = set(getattr(tokenizer, "special_ids", ()))
    n_real = min(int(tokenizer.vocab_size), vocab_size)
    pieces = [b"" if i in special else bytes(tokenizer.token_bytes(i)) for i in range(n_real)]
    width = max([1] + [len(p) for p in pieces])
    table = np.zeros((vocab_size, width), np.uint8)
    length = np.zeros((vocab_size,), np.int32)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = np.frombuffer(p, np.uint8)
        length[i] = len(p)
    return {"bytes": table, "length": length}


def encode_texts(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 encode strings into (text uint8 [B, max_len], text_len int32 [B]); too-long text is an error."""
    data = [t.encode("utf-8") for t in texts]
    text = np.zeros((len(data), max_len), np.uint8)
    for i, d in enumerate(data):
        if len(d) > max_len:
            raise ValueError(f"encode_texts: texts[{i}] is {len(d)} UTF-8 bytes, more than max_len={max_len}")
        text[i, : len(d)] = np.frombuffer(d, np.uint8)
    return text, np.array([len(d) for d in data], np.int32).reshape(len(data))


def decode_texts(text, text_len) -> list[str]:
    """Host inverse of `encode_texts` (invalid UTF-8 becomes U+FFFD)."""
    text, text_len = np.asarray(text), np.asarray(text_len)
    return [bytes(row[:n]).decode("utf-8", errors="replace") for row, n in zip(text, text_len)]


def encode_ground_truth(ground_truths: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gt uint8 [B, L], gt_len int32 [B], gt_kind int32 [B]); kind is the published branch rule decided on the
    Python string (paper.KIND_LIST / KIND_SHORT / KIND_LONG)."""
    gt, gt_len = encode_texts(ground_truths, max_len)
    kind = np.array([paper.ground_truth_kind(g) for g in ground_truths], np.int32).reshape(len(ground_truths))
    return gt, gt_len, kind


# ---------------------------------------------------------------------------------------------- on device
def positions(text: jax.Array) -> jax.Array:
    """int32 [1, L] column index, broadcastable against [B, L]."""
    return jnp.arange(text.shape[-1], dtype=jnp.int32)[None, :]


def valid_mask(text: jax.Array, text_len: jax.Array) -> jax.Array:
    """bool [B, L]: True on the first text_len bytes of each row."""
    return positions(text) < text_len[:, None]


def byte_in(text: jax.Array, charset: bytes) -> jax.Array:
    """bool [B, L]: the byte is one of `charset` (checked without regard to text_len)."""
    hit = jnp.zeros(text.shape, bool)
    for c in charset:
        hit = hit | (text == c)
    return hit


def is_whitespace(text: jax.Array) -> jax.Array:
    return byte_in(text, WHITESPACE_BYTES)


def occurrences(text: jax.Array, text_len: jax.Array, pattern: bytes) -> jax.Array:
    """bool [B, L]: `pattern` (a static byte string) starts at this position and ends within text_len."""
    n, length = len(pattern), text.shape[-1]
    if n == 0:
        raise ValueError("occurrences: pattern must be non-empty")
    padded = jnp.pad(text, ((0, 0), (0, n)))
    hit = jnp.ones(text.shape, bool)
    for j, c in enumerate(pattern):
        hit = hit & (padded[:, j : j + length] == c)
    return hit & (positions(text) + n <= text_len[:, None])


def first_index(mask: jax.Array, start=0) -> jax.Array:
    """int32 [B]: smallest column >= start (scalar or [B]) where mask is True; L when there is none."""
    idx, length = positions(mask), mask.shape[-1]
    start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), mask.shape[:1])
    return jnp.min(jnp.where(mask & (idx >= start[:, None]), idx, length), axis=-1)


def last_index(mask: jax.Array) -> jax.Array:
    """int32 [B]: largest column where mask is True; -1 when there is none."""
    return jnp.max(jnp.where(mask, positions(mask), -1), axis=-1)


def kth_true(mask: jax.Array, n: int) -> jax.Array:
    """int32 [B, n]: the column of the k-th True of each row (k = 0..n-1), L where the row has fewer.

    Compaction by gathers (binary search over the running count) instead of a scatter: every output reads
    its own source, so the result cannot depend on the order in which a backend applies scattered writes."""
    count = jnp.cumsum(mask, axis=-1, dtype=jnp.int32)  # [B, L]
    want = jnp.arange(1, n + 1, dtype=jnp.int32)
    return jax.vmap(lambda c: jnp.searchsorted(c, want, side="left"))(count).astype(jnp.int32)


def gather_or(values: jax.Array, cols: jax.Array, fill=0) -> jax.Array:
    """values[b, cols[b, k]] along axis 1, `fill` where cols is out of range (e.g. L from kth_true)."""
    ok = (cols >= 0) & (cols < values.shape[1])
    got = jnp.take_along_axis(values, jnp.clip(cols, 0, values.shape[1] - 1), axis=1)
    return jnp.where(ok, got, jnp.asarray(fill, values.dtype))


def compact(text: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stable compaction: the kept bytes of each row moved left in order, zero padded. keep must be False
    beyond text_len. Returns (text uint8 [B, L], text_len int32 [B])."""
    new_len = jnp.sum(keep, axis=-1, dtype=jnp.int32)
    return gather_or(text, kth_true(keep, text.shape[1])), new_len


def normalise_tags(text: jax.Array, text_len: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Byte version of `re.sub(r"\\s*(<|>|/)\\s*", r"\\1", s)`.

    The substitution removes exactly the whitespace runs whose neighbour on the left or on the right is one
    of `<`, `>`, `/` (a run with no tag character beside it is never inside a match). Each whitespace byte
    looks at the nearest non-whitespace byte on either side (prefix max / suffix min of positions).
    """
    valid = valid_mask(text, text_len)
    space = is_whitespace(text) & valid
    tag = byte_in(text, TAG_BYTES) & valid
    idx, length = positions(text), text.shape[-1]
    prev_solid = jax.lax.cummax(jnp.where(space, -1, idx), axis=1)  # -1: none
    next_solid = jax.lax.cummin(jnp.where(space, length, idx), axis=1, reverse=True)  # L: none
    tag_padded = jnp.pad(tag, ((0, 0), (1, 1)))  # index i+1 <-> column i
    tag_before = jnp.take_along_axis(tag_padded, prev_solid + 1, axis=1)
    tag_after = jnp.take_along_axis(tag_padded, next_solid + 1, axis=1)
    return compact(text, valid & ~(space & (tag_before | tag_after)))


def decode_tokens(
    token_ids: jax.Array, mask: jax.Array, table: dict, max_len: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Concatenate the bytes of the unmasked tokens of each row.

    token_ids int [B, T], mask bool/int [B, T] (any pattern; masked tokens contribute nothing), table from
    `token_bytes_table`. Returns (text uint8 [B, L], text_len int32 [B]) with static L = max_len, default
    T * K (never truncates); with a smaller max_len, text past L is cut and text_len is min(total, L).
    Ids outside [0, V) decode to nothing. Each output byte finds its token by binary search over the
    running byte offsets, so the work is O(B * L * log T).
    """
    token_bytes, token_len = jnp.asarray(table["bytes"]), jnp.asarray(table["length"])
    vocab, width = token_bytes.shape
    length = token_ids.shape[1] * width if max_len is None else int(max_len)
    in_vocab = (token_ids >= 0) & (token_ids < vocab)
    ids = jnp.where(in_vocab, token_ids, 0).astype(jnp.int32)
    n_bytes = jnp.where(in_vocab & mask.astype(bool), token_len[ids], 0)  # [B, T]
    ends = jnp.cumsum(n_bytes, axis=1, dtype=jnp.int32)  # [B, T] exclusive end
    out_pos = jnp.arange(length, dtype=jnp.int32)
    tok = jax.vmap(lambda e: jnp.searchsorted(e, out_pos, side="right"))(ends)  # [B, L]
    tok = jnp.minimum(tok, token_ids.shape[1] - 1)
    tok_start = jnp.take_along_axis(ends - n_bytes, tok, axis=1)
    tok_id = jnp.take_along_axis(ids, tok, axis=1)
    byte = token_bytes[tok_id, jnp.clip(out_pos[None, :] - tok_start, 0, width - 1)]
    total = ends[:, -1]
    text = jnp.where(out_pos[None, :] < total[:, None], byte, 0).astype(jnp.uint8)
    return text, jnp.minimum(total, length)
