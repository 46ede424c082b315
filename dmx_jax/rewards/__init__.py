"""Rewards for GRPO: the paper's string-level reward and jitted array versions over token ids."""
