"""Rewards for GRPO: the paper's string-level reward and jitted array versions over token ids.

Library entry points:
- `paper_reward(completion, ground_truth)` / `paper_rewards`: the published `compute_xray_score` on strings
  (host reference, serial Python);
- `score_texts(completions, ground_truths, preset="paper")`: the jitted preset on strings, numpy out;
- `make_reward_fn(PRESETS[name], token_bytes_table(tok, V), max_new_tokens)`: the jitted reward GRPO calls on
  token ids, with `ground_truth_arrays(answers, boxes, cfg)` encoding each prompt's truth and
  `reward_byte_budget(max_new_tokens, table)` the decoder's byte budget;
- `last_boxed(text)`: the project's one `\\boxed{}` brace matcher (host side).
"""

from dmx_jax.rewards.combine import (
    PRESETS,
    RewardConfig,
    ground_truth_arrays,
    make_reward_fn,
    reward_byte_budget,
    score_bytes,
)
from dmx_jax.rewards.paper import boxed_content, last_boxed, paper_reward, paper_rewards
from dmx_jax.rewards.text_bytes import token_bytes_table
from dmx_jax.rewards.texts import score_texts

__all__ = [
    "PRESETS",
    "RewardConfig",
    "ground_truth_arrays",
    "make_reward_fn",
    "reward_byte_budget",
    "score_bytes",
    "boxed_content",
    "last_boxed",
    "paper_reward",
    "paper_rewards",
    "token_bytes_table",
    "score_texts",
]
