"""--set overrides: nested fields, type coercion, and errors that name the key."""

import pickle
from types import SimpleNamespace

import pytest

import data_pipelines.pipeline.encode as encode_module
from dmx_jax.model import preset
from dmx_jax.rewards.combine import PRESETS as REWARDS
from dmx_jax.rewards.combine import text_budget
from dmx_jax.rewards.text_bytes import QWEN2_5_LONGEST_TOKEN_BYTES
from experiments.configs import PRESETS, tiny
from experiments.datasets import replay_examples, row_encoder
from experiments.overrides import ConfigError, apply_overrides


def test_nested_overrides_coerce_types():
    cfg = apply_overrides(
        tiny(),
        [
            "rl.algo.group_size=8",
            "sft.optim.learning_rate=3e-4",
            "export_hf=false",
            "data.root=/data/mimic",
            "hf_checkpoint=none",
            "eval.arena_judges=('rubric','llm')",
        ],
    )
    assert cfg.rl.algo.group_size == 8 and cfg.sft.optim.learning_rate == 3e-4 and cfg.export_hf is False
    assert cfg.data.root == "/data/mimic" and cfg.hf_checkpoint is None
    assert cfg.eval.arena_judges == ("rubric", "llm")


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("sft.optim.lr=1", "unknown field 'lr'"),
        ("rl.algo.group_size=many", "cannot parse 'many'"),
        ("sft=3", "is a section"),
        ("novalue", "expects key=value"),
        ("rl.algo.kl_estimator=k9", "kl_estimator"),
    ],
)
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        apply_overrides(tiny(), [assignment])


def test_presets_build():
    expected_model = {
        "tiny": "small",
        "tiny_base": "base",
        "qwen2_5_vl_3b": "qwen2_5_vl_3b",
        "qwen2_5_vl_7b": "qwen2_5_vl_7b",
        "qwen2_5_vl_7b_lora": "qwen2_5_vl_7b",
    }
    for name, make in PRESETS.items():
        assert make().name == name and make().model == expected_model[name]
        preset(make().model)  # every experiment names a real model preset


def test_scaled_presets_cap_the_reward_buffers_and_small_ones_do_not():
    """At Qwen2.5's 128-byte longest token the uncapped decoder keeps 131,072 bytes per 1,024-token completion;
    the 3B / 7B runs keep 16 per token and a 2,048-byte boxed answer (cut rows counted in reward/truncated)."""
    qwen = {"length": [QWEN2_5_LONGEST_TOKEN_BYTES]}
    for name in ("qwen2_5_vl_3b", "qwen2_5_vl_7b"):
        rl = PRESETS[name]().rl
        reward = rl.reward_config()
        assert reward.name == rl.reward_preset and reward.answer_bytes == 2048
        assert text_budget(reward, qwen, rl.algo.max_new_tokens) == 16 * 1024
    rl = tiny().rl
    assert rl.reward_config() == REWARDS[rl.reward_preset]
    assert text_budget(rl.reward_config(), qwen, 192) == 192 * 128


def test_cold_start_replay_picks_other_tasks_and_encodes_them_plain(monkeypatch):
    cfg = apply_overrides(tiny(), ["data.cold_start_replay=0.5"])
    train = [
        SimpleNamespace(example_id=f"e{i}", task=t)
        for i, t in enumerate(["vqa", "findings", "grounding", "impression", "classification", "vqa"] * 5)
    ]
    picked = replay_examples(cfg, train, n_reasoning=10)
    assert len(picked) == 5 and {e.task for e in picked} <= {"findings", "impression", "classification"}
    assert [e.example_id for e in picked] == [e.example_id for e in replay_examples(cfg, train, 10)]  # seeded
    assert replay_examples(apply_overrides(tiny(), ["data.cold_start_replay=0"]), train, 10) == []
    enc = row_encoder(cfg, None, preset("tiny"), reasoning=True, plain_ids=frozenset({"e1"}))
    enc = pickle.loads(pickle.dumps(enc))  # grain workers receive it pickled
    seen = []
    monkeypatch.setattr(
        encode_module, "encode_example", lambda ex, tok, c, **kw: seen.append((ex.example_id, c.reasoning))
    )
    enc(train[1], seq_len=8, patch_budget=8)
    enc(train[0], seq_len=8, patch_budget=8)
    assert seen == [("e1", False), ("e0", True)]
