"""Tokenizers behind one interface: a real Qwen2.5-VL tokenizer.json (byte-level BPE) and a small
SentencePiece model trained on the synthetic corpus with the same special tokens (the tiny default).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import sentencepiece as spm
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _T

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    eos_id: int
    im_start_id: int
    im_end_id: int
    vision_start_id: int
    vision_end_id: int
    image_pad_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...


class _SpecialIds:
    def _bind_specials(self, lookup):
        ids = {}
        for tok in SPECIAL_TOKENS:
            i = lookup(tok)
            if i is None or i < 0:
                raise ValueError(f"tokenizer has no special token {tok!r}")
            ids[tok] = i
        self.pad_id = self.eos_id = ids["<|endoftext|>"]
        self.im_start_id, self.im_end_id = ids["<|im_start|>"], ids["<|im_end|>"]
        self.vision_start_id, self.vision_end_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.image_pad_id = ids["<|image_pad|>"]
        self.special_ids = frozenset(ids.values())


class HFTokenizer(_SpecialIds):
    """A Hugging Face `tokenizer.json` (Qwen2.5-VL's byte-level BPE) through the `tokenizers` library."""

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._bind_specials(tok.token_to_id)
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HFTokenizer:
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no tokenizer.json")
        return cls(_T.from_file(str(p)))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._tok.id_to_token(int(token_id))
        if piece is None:
            return b""
        if int(token_id) in self.special_ids or any(ch not in self._byte_decoder for ch in piece):
            return piece.encode("utf-8")
        return bytes(self._byte_decoder[ch] for ch in piece)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256+ code points."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class SentencePieceTokenizer(_SpecialIds):
    """SentencePiece BPE with byte fallback (any text round-trips) and the Qwen special tokens."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self._bind_specials(lambda t: self._sp.piece_to_id(t) if self._sp.piece_to_id(t) != self._sp.unk_id() else None)
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]

    def _piece_bytes(self, i: int) -> bytes:
        piece = self._sp.id_to_piece(i)
        if self._sp.is_byte(i):
            return bytes([int(piece[3:5], 16)])
        if self._sp.is_control(i) or self._sp.is_unknown(i):
            return b""
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[int(token_id)]


def train_sentencepiece(
    corpus: Iterable[str], vocab_size: int, cache_dir: str | os.PathLike | None = None
) -> SentencePieceTokenizer:
    """Train (or load from cache, keyed by corpus + settings hash) a BPE model with byte fallback."""
    lines = [ln for ln in corpus if ln.strip()]
    # byte fallback needs 256 byte pieces + every corpus character + the special symbols
    vocab_size = max(vocab_size, 256 + len(set("".join(lines))) + len(SPECIAL_TOKENS) + 8)
    key = hashlib.sha256(("\n".join(lines) + f"|{vocab_size}|v1").encode()).hexdigest()[:16]
    cache = Path(cache_dir or Path.home() / ".cache" / "dmx_jax") / f"spm-{key}.model"
    if cache.is_file():
        return SentencePieceTokenizer(cache.read_bytes())
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        user_defined_symbols=list(SPECIAL_TOKENS[1:]) + ["<think>", "</think>", "\\boxed{"],
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=2,
        eos_piece="<|endoftext|>",
        split_digits=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(cache)
    return SentencePieceTokenizer(buf.getvalue())


# Qwen2's pre-tokenizer split: BPE never merges across these pieces (digits stay single, as in Qwen2.5-VL).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def train_byte_level_bpe(corpus: Iterable[str], vocab_size: int, path: str | os.PathLike) -> HFTokenizer:
    """A Qwen2-style byte-level BPE `tokenizer.json` (Qwen2 split, the Qwen special tokens first) trained on
    `corpus` and written to `path`; deterministic in the corpus. Any text round-trips (256 byte symbols)."""
    tok = _T(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS) + ["<|video_pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([ln for ln in corpus if ln.strip()], trainer)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return HFTokenizer.from_file(path)
