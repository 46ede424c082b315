"""String-level entry point that runs the same jitted code GRPO runs: completions and ground truths as Python
strings -> UTF-8 byte arrays sized from the inputs (bucketed to powers of two, so a handful of shapes
compile) -> `combine.score_bytes` under jit -> numpy arrays. Nothing is cut: the completion and answer
buffers always hold the longest input.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np

from dmx_jax.rewards.combine import PRESETS, RewardConfig, ground_truth_arrays, score_bytes
from dmx_jax.rewards.text_bytes import encode_texts

MIN_BUCKET = 64


def bucket(n: int, minimum: int = MIN_BUCKET) -> int:
    """The smallest power of two >= max(n, minimum)."""
    m = max(int(n), int(minimum), 1)
    return 1 << (m - 1).bit_length()


@functools.lru_cache(maxsize=32)
def _jitted(cfg: RewardConfig):
    return jax.jit(lambda text, text_len, truth: score_bytes(text, text_len, truth, cfg))


def score_texts(
    completions: Sequence[str],
    ground_truths: Sequence[str],
    preset: str | RewardConfig = "paper",
    boxes: Sequence[Sequence[Sequence[float]]] | None = None,
) -> dict[str, np.ndarray]:
    """Reward of each completion against its ground truth with the jitted preset (default the published
    `paper` reward). Returns float32 [N] arrays: overall, format, accuracy, coordinate (and the preset's
    grounding terms; truncated is always 0 here). boxes: truth boxes per row for the grounded preset."""
    completions, ground_truths = list(completions), list(ground_truths)
    if len(completions) != len(ground_truths):
        raise ValueError(f"score_texts: {len(completions)} completions but {len(ground_truths)} ground truths")
    for name, seq in (("completions", completions), ("ground_truths", ground_truths)):
        bad = [type(x).__name__ for x in seq if not isinstance(x, str)]
        if bad:
            raise TypeError(f"score_texts: {name} must be str, got {bad[0]}")
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    n = len(completions)
    if n == 0:
        return {k: np.zeros((0,), np.float32) for k in ("overall", "format", "accuracy", "coordinate")}
    text_width = bucket(max(len(c.encode("utf-8")) for c in completions))
    gt_width = bucket(max(len(g.encode("utf-8")) for g in ground_truths))
    cfg = dataclasses.replace(cfg, max_text_bytes=text_width, max_answer_bytes=gt_width, answer_bytes=None)
    rows = bucket(n, 8)
    pad = rows - n
    text, text_len = encode_texts(completions + [""] * pad, text_width)
    truth_boxes = list(boxes) if boxes is not None else [[]] * n
    truth = ground_truth_arrays(ground_truths + ["x"] * pad, truth_boxes + [[]] * pad, cfg)
    out = _jitted(cfg)(text, text_len, truth)
    return {k: np.asarray(v)[:n] for k, v in out.items()}
