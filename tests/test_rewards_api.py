"""The package's library surface: imports, the one host brace matcher, the byte budget, score_texts shapes."""

from __future__ import annotations

import numpy as np
import pytest

from dmx_jax.rewards import boxed_content, last_boxed, paper_reward, reward_byte_budget, score_texts
from dmx_jax.rewards.combine import RewardConfig


def test_package_exports():
    from dmx_jax.rewards import (  # noqa: F401, PLC0415 tested
        PRESETS,
        ground_truth_arrays,
        last_boxed,
        make_reward_fn,
        paper_reward,
        reward_byte_budget,
        score_texts,
    )

    assert {"paper", "grounded"} <= set(PRESETS)


def test_last_boxed_is_mathrulers_matcher():
    grader = pytest.importorskip("mathruler.grader")
    cases = [
        "\\boxed{a}",
        "x \\boxed{a} \\boxed{ b{c}d }",
        "\\boxed{\\frac{1}{2}} tail",
        "\\boxed{}",
        "\\boxed{{a}",
        "\\boxed{a",
        "no box",
        "\\boxed{a}}",
        "\\boxed{x}\\boxed{y",
    ]
    want_raw = ["a", " b{c}d ", "\\frac{1}{2}", "", None, None, None, "a", None]
    assert [last_boxed(c) for c in cases] == want_raw
    for c in cases:
        assert boxed_content(c) == grader.extract_boxed_content(c), c


def test_reward_byte_budget():
    table = {"length": np.array([0, 1, 7, 3], np.int32)}
    assert reward_byte_budget(1024, table) == 7 * 1024
    assert reward_byte_budget(1024, table, cap=4096) == 4096
    assert reward_byte_budget(1024, table, bytes_per_token=4) == 4 * 1024
    assert reward_byte_budget(1024, table, bytes_per_token=16) == 7 * 1024  # a cap above the longest token
    with pytest.raises(ValueError):
        reward_byte_budget(0, table)


def test_reward_config_rejects_empty_buffers():
    for field in ("max_text_bytes", "bytes_per_token", "answer_bytes"):
        with pytest.raises(ValueError, match=field):
            RewardConfig(**{field: 0})


def test_score_texts_shapes_and_errors():
    out = score_texts([], [])
    assert set(out) >= {"overall", "format", "accuracy", "coordinate"} and out["overall"].shape == (0,)
    comps = ["<think>[1, 2, 3, 4]</think>\\boxed{Yes}", "\\boxed{a | b}", "x" * 300]
    gts = ["yes", "a|c|b", "q r s t"]
    out = score_texts(comps, gts)
    assert all(v.shape == (3,) for v in out.values())
    for key in ("overall", "format", "accuracy", "coordinate"):
        np.testing.assert_allclose(out[key], [paper_reward(c, g)[key] for c, g in zip(comps, gts)], atol=3e-6)
    with pytest.raises(ValueError):
        score_texts(["a"], [])
    with pytest.raises(TypeError):
        score_texts([None], ["a"])
