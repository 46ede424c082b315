"""Reward presets and the jitted reward function GRPO calls on sampled token ids.

    overall = (1 - format_weight) * accuracy + format_weight * format + coordinate
              + grounding_f1_weight * F1@0.5(cited boxes, truth) + grounding_iou_weight * mean matched IoU
    (the two box terms only for prompts that have truth boxes)

`paper` reproduces the published reward (character BLEU, the +0.05 / -0.2 box-mention term); `grounded`
adds the box-vs-truth terms and scores long answers with word BLEU. Everything runs on device over padded
arrays: token ids -> bytes (a table lookup) -> tag normalisation -> parsing -> scores. Ground truth is data,
encoded once per prompt on the host (`ground_truth_arrays`). `host_reference=True` scores decoded strings with
`paper.paper_reward` instead (exact string semantics, serial Python; for checking, not for speed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.rewards import paper
from dmx_jax.rewards.accuracy import accuracy_score
from dmx_jax.rewards.grounding import grounding_reward
from dmx_jax.rewards.parse import cited_boxes, parse_completions
from dmx_jax.rewards.text_bytes import decode_texts, decode_tokens, encode_ground_truth


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    name: str = "paper"
    format_weight: float = 0.1
    coordinate: bool = True  # the published +0.05 per box <= 512, -0.2 beyond, capped at 0.15
    bleu: str = "char"  # "char" (published) | "word"
    rouge: str = "stemmed"  # "stemmed" (published: Porter, as rouge_score) | "words" (no stemming)
    grounding_f1_weight: float = 0.0  # F1 at IoU 0.5 of the completion's boxes vs the truth boxes
    grounding_iou_weight: float = 0.0  # mean IoU of greedily matched boxes
    grounding_boxes: str = "text"  # boxes the two terms score: "text" (every box of the completion) |
    # "answer" (those inside the boxed answer, what evaluation reads)
    max_text_bytes: int | None = None  # decoded completion buffer; None: reward_byte_budget(max_new_tokens,
    # table, bytes_per_token): max_new_tokens x longest token unless capped
    bytes_per_token: int | None = None  # cap on that budget per generated token (None: the longest token, never
    # cut). Qwen2.5's longest token is 128 bytes, its English text ~4-5 per
    # token: a 16-byte cap costs 8x less and cuts only degenerate rows
    max_answer_bytes: int = 1024  # ground-truth buffer: longer ground truths raise (reports: raise it)
    answer_bytes: int | None = None  # boxed-answer buffer; None: the completion buffer (never cut); a
    # longer answer is cut and counted in `truncated`
    max_boxes: int = 8
    host_reference: bool = False

    def __post_init__(self):
        if self.rouge not in ("stemmed", "words"):
            raise ValueError(f"RewardConfig.rouge must be 'stemmed' or 'words', got {self.rouge!r}")
        if self.grounding_boxes not in ("text", "answer"):
            raise ValueError(f"RewardConfig.grounding_boxes must be 'text' or 'answer', got {self.grounding_boxes!r}")
        if self.bleu not in ("char", "word"):
            raise ValueError(f"RewardConfig.bleu must be 'char' or 'word', got {self.bleu!r}")
        if not 0.0 <= self.format_weight <= 1.0:
            raise ValueError(f"RewardConfig.format_weight must be in [0, 1], got {self.format_weight}")
        for name in ("max_text_bytes", "bytes_per_token", "answer_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"RewardConfig.{name} must be >= 1 or None, got {value}")


PRESETS = {
    "paper": RewardConfig(),
    "grounded": RewardConfig(name="grounded", bleu="word", grounding_f1_weight=0.25, grounding_iou_weight=0.25),
    "grounded_answer": RewardConfig(
        name="grounded_answer",
        bleu="word",
        grounding_f1_weight=0.25,
        grounding_iou_weight=0.25,
        grounding_boxes="answer",
    ),
}


def ground_truth_arrays(answers: Sequence[str], boxes: Sequence[Sequence[Sequence[float]]], cfg: RewardConfig) -> dict:
    """Host encoding of each prompt's truth: answer bytes + kind, truth boxes (model-input pixels) + validity."""
    gt, gt_len, kind = encode_ground_truth(list(answers), cfg.max_answer_bytes)
    box = np.zeros((len(answers), cfg.max_boxes, 4), np.float32)
    valid = np.zeros((len(answers), cfg.max_boxes), bool)
    for i, bs in enumerate(boxes):
        for k, b in enumerate(list(bs)[: cfg.max_boxes]):
            box[i, k], valid[i, k] = b, True
    return {"answer": gt, "answer_len": gt_len, "kind": kind, "boxes": box, "box_valid": valid}


def reward_byte_budget(
    max_new_tokens: int, token_table: dict, cap: int | None = None, bytes_per_token: int | None = None
) -> int:
    """Bytes the reward decoder keeps per completion so that no completion of `max_new_tokens` tokens is cut:
    max_new_tokens x the tokenizer's longest token (`token_table` from text_bytes.token_bytes_table, or just
    its `length` column). `cap` (bytes) and `bytes_per_token` (x max_new_tokens) bound it; completions beyond
    a bound are cut and counted in the `truncated` reward key."""
    if max_new_tokens < 1:
        raise ValueError(f"reward_byte_budget: max_new_tokens must be >= 1, got {max_new_tokens}")
    per_token = max(1, int(np.max(np.asarray(token_table["length"]))))
    if bytes_per_token is not None:
        per_token = min(per_token, int(bytes_per_token))
    budget = int(max_new_tokens) * per_token
    return budget if cap is None else min(budget, int(cap))


def score_bytes(text, text_len, truth: dict, cfg: RewardConfig, total_len=None) -> dict:
    """All reward terms [B] from decoded completions (uint8 [B, L]) and truth arrays. total_len int32 [B]: the
    completion's full byte length when `text` may be cut (default text_len); rows cut here or whose boxed
    answer exceeds cfg.answer_bytes get truncated = 1.0."""
    p = parse_completions(text, text_len, cfg.max_boxes, cfg.answer_bytes)
    acc = accuracy_score(
        p["answer"],
        p["answer_len"],
        truth["answer"],
        truth["answer_len"],
        truth["kind"],
        bleu=cfg.bleu,
        rouge=cfg.rouge,
    )
    total_len = text_len if total_len is None else total_len
    truncated = (total_len > text_len) | p["answer_cut"]
    out = {
        "accuracy": acc,
        "format": p["format"],
        "truncated": truncated.astype(jnp.float32),
        "coordinate": p["coordinate"] if cfg.coordinate else jnp.zeros_like(acc),
    }
    overall = (1 - cfg.format_weight) * acc + cfg.format_weight * p["format"] + out["coordinate"]
    if cfg.grounding_f1_weight or cfg.grounding_iou_weight:
        src, src_len = (p["text"], p["text_len"]) if cfg.grounding_boxes == "text" else (p["answer"], p["answer_len"])
        every = cited_boxes(src, src_len, cfg.max_boxes, whole_text=True)
        g = grounding_reward(every["boxes"], every["box_valid"], truth["boxes"], truth["box_valid"])
        # only prompts with truth boxes are scored on boxes: elsewhere "no box" would earn a free 1.0 and teach
        # the policy to stop citing regions (seen in the first tiny runs)
        has_truth = jnp.any(truth["box_valid"], axis=1)
        out["grounding_f1"] = jnp.where(has_truth, g["f1"], 0.0)
        out["grounding_iou"] = jnp.where(has_truth, g["mean_iou"], 0.0)
        overall = (
            overall + cfg.grounding_f1_weight * out["grounding_f1"] + cfg.grounding_iou_weight * out["grounding_iou"]
        )
    out["overall"] = overall.astype(jnp.float32)
    return out


def _total_bytes(tokens, cmask, table):
    """int32 [B]: the full UTF-8 length of each completion (as decode_tokens counts it, before any cut)."""
    vocab = table["length"].shape[0]
    ok = (tokens >= 0) & (tokens < vocab) & cmask.astype(bool)
    return jnp.sum(jnp.where(ok, table["length"][jnp.where(ok, tokens, 0)], 0), axis=1, dtype=jnp.int32)


def text_budget(cfg: RewardConfig, token_table: dict, max_new_tokens: int | None) -> int | None:
    """The decoder's bytes per completion: cfg.max_text_bytes, else reward_byte_budget(max_new_tokens, ...,
    cfg.bytes_per_token) when max_new_tokens is known, else None (decode_tokens' T x longest token)."""
    if cfg.max_text_bytes is not None or max_new_tokens is None:
        return cfg.max_text_bytes
    return reward_byte_budget(max_new_tokens, token_table, bytes_per_token=cfg.bytes_per_token)


def score_tokens(tokens, cmask, truth: dict, token_table: dict, cfg: RewardConfig, max_bytes: int | None) -> dict:
    """The reward program (pure): token ids [B, T] + completion mask -> score_bytes' dict of float32 [B].
    `make_reward_fn` jits it with the table closed over; the fit check compiles it with the table abstract."""
    text, n = decode_tokens(tokens, cmask, token_table, max_bytes)
    return score_bytes(text, n, truth, cfg, _total_bytes(tokens, cmask, token_table))


def make_reward_fn(cfg: RewardConfig, token_table: dict, max_new_tokens: int | None = None) -> Callable:
    """reward_fn(tokens [B, T], completion_mask [B, T], truth dict) -> dict of float32 [B] (jitted).

    The decoder keeps `text_budget(cfg, token_table, max_new_tokens)` bytes per completion; with no cap
    (max_text_bytes and bytes_per_token None) nothing is cut. Keys: overall, format, accuracy, coordinate,
    truncated (1.0 where the completion or its boxed answer did not fit and was scored cut; its batch mean is
    the truncation rate), plus the grounded terms.
    """
    table = jax.tree.map(jnp.asarray, token_table)
    max_bytes = text_budget(cfg, token_table, max_new_tokens)

    if cfg.host_reference:

        def host(tokens, cmask, truth):
            text, n = decode_tokens(jnp.asarray(tokens), jnp.asarray(cmask), table, max_bytes)
            total = _total_bytes(jnp.asarray(tokens), jnp.asarray(cmask), table)
            answers = decode_texts(np.asarray(truth["answer"]), np.asarray(truth["answer_len"]))
            rows = [paper.paper_reward(t, a) for t, a in zip(decode_texts(np.asarray(text), np.asarray(n)), answers)]
            out = {k: jnp.asarray([r[k] for r in rows], jnp.float32) for k in rows[0]}
            return {**out, "truncated": (total > n).astype(jnp.float32)}

        return host

    @jax.jit
    def reward_fn(tokens, cmask, truth):
        return score_tokens(tokens, cmask, truth, table, cfg, max_bytes)

    return reward_fn
