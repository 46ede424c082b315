"""The whole experiment config checked before any compute: one line naming the field, the value and what is allowed.

Two sources of truth, both read here rather than copied: `Literal[...]` annotations on config fields (checked for
every dataclass in the tree, dmx_jax's configs included) and the registries of names (model presets, dataset
adapters, reward presets, arena judges, stage names).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from data_pipelines.adapters import ADAPTERS
from data_pipelines.synthetic.vqa import VQA_FAMILIES
from dmx_jax.model.config import DTYPES
from dmx_jax.model.config import PRESETS as MODEL_PRESETS
from dmx_jax.rewards.combine import PRESETS as REWARD_PRESETS
from experiments.overrides import ConfigError

STAGES = ("align", "sft", "cold_start", "grpo")
ARENA_JUDGES = ("rubric",)
SYNTHETIC_TASKS = ("findings", "impression", "vqa", "grounding", "referring", "classification")


def _choices(field: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed; choose from {', '.join(map(str, allowed))}")


def _literals(cfg: Any, prefix: str = "") -> None:
    """Every Literal-annotated field of every nested dataclass holds one of its values."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint, name = getattr(cfg, f.name), hints.get(f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _literals(value, name + ".")
            continue
        options = literal_values(hint)
        if options is not None:
            _choices(name, value, options)


def literal_values(hint) -> tuple | None:
    """The allowed values of a Literal (or Optional Literal) annotation, else None."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is typing.Literal:
                return (*typing.get_args(arg), None) if type(None) in typing.get_args(hint) else typing.get_args(arg)
    return None


def _positive(fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer")


def validate(cfg) -> Any:
    """Raise ConfigError on the first wrong value of an ExperimentConfig; return it unchanged otherwise."""
    _literals(cfg)
    _choices("model", cfg.model, tuple(MODEL_PRESETS))
    _choices("dtype", cfg.dtype, DTYPES)
    _choices("data.source", cfg.data.source, ("synthetic", *sorted(ADAPTERS)))
    _choices("rl.reward_preset", cfg.rl.reward_preset, tuple(REWARD_PRESETS))
    for judge in cfg.eval.arena_judges:
        _choices("eval.arena_judges", judge, ARENA_JUDGES)
    for task in cfg.data.reasoning_tasks:
        _choices("data.reasoning_tasks", task, SYNTHETIC_TASKS)

    for field, pairs, names in (
        ("data.train_task_mix", cfg.data.train_task_mix, SYNTHETIC_TASKS),
        ("data.vqa_family_weights", cfg.data.vqa_family_weights, VQA_FAMILIES),
    ):
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], (int, float)) and pair[1] >= 0):
                raise ConfigError(f"{field}: {pair!r} is not a (name, weight >= 0) pair")
            _choices(field, pair[0], names)
    for axis in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, axis)
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{axis}={size!r} must be a positive integer or -1 (all remaining devices)")
    fills = [a for a in ("data", "fsdp", "tensor") if getattr(cfg.mesh, a) == -1]
    if len(fills) > 1:
        raise ConfigError(
            f"mesh.{fills[0]} and mesh.{fills[1]} are both -1; at most one axis may take the remaining "
            f"devices: set one of them, e.g. --set mesh.{fills[1]}=1"
        )
    d = cfg.data
    _positive(
        {
            "data.max_seq_len": d.max_seq_len,
            "data.reasoning_seq_len": d.reasoning_seq_len,
            "data.prompt_len": d.prompt_len,
            "data.reasoning_prompt_len": d.reasoning_prompt_len,
            "data.train_examples": d.train_examples,
            "data.image_size": d.image_size,
            "sft.steps": cfg.sft.steps,
            "sft.batch_size": cfg.sft.batch_size,
            "cold_start.steps": cfg.cold_start.steps,
            "cold_start.batch_size": cfg.cold_start.batch_size,
            "rl.steps": cfg.rl.steps,
            "rl.prompts_per_step": cfg.rl.prompts_per_step,
            "eval.examples": cfg.eval.examples,
        }
    )
    if d.min_pixels > d.max_pixels:
        raise ConfigError(f"data.min_pixels={d.min_pixels} exceeds data.max_pixels={d.max_pixels}")
    for section in ("sft", "cold_start"):
        if getattr(cfg, section).pad_multiple < 0:
            raise ConfigError(
                f"{section}.pad_multiple={getattr(cfg, section).pad_multiple} must be >= 0 "
                f"(0: batches keep the full sequence length)"
            )
    rl, algo = cfg.rl, cfg.rl.algo
    if rl.eval_every < 0 or rl.eval_prompts < 1:
        raise ConfigError(
            f"rl.eval_every={rl.eval_every} must be >= 0 (0: no validation) and rl.eval_prompts={rl.eval_prompts} >= 1"
        )
    for field in ("reward_bytes_per_token", "reward_answer_bytes"):
        value = getattr(rl, field)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"rl.{field}={value!r} must be a positive integer or None (no cap)")
    if algo.ppo_mini_batch_size and rl.prompts_per_step % algo.ppo_mini_batch_size:
        raise ConfigError(
            f"rl.algo.ppo_mini_batch_size={algo.ppo_mini_batch_size} must divide "
            f"rl.prompts_per_step={rl.prompts_per_step} (mini-batches of whole prompt groups)"
        )
    if algo.old_logp == "current" and algo.ppo_mini_batch_size not in (0, rl.prompts_per_step):
        raise ConfigError(
            "rl.algo.old_logp='current' is exact only with one mini-batch per step: set "
            f"rl.algo.ppo_mini_batch_size=0 or {rl.prompts_per_step}, not {algo.ppo_mini_batch_size}"
        )
    for section in ("sft", "cold_start", "rl"):
        vision_lr = getattr(cfg, section).vision_lr
        if vision_lr is not None and vision_lr < 0:
            raise ConfigError(f"{section}.vision_lr={vision_lr} must be >= 0 (0: the vision tower is frozen) or None")
    for section in ("sft", "cold_start", "rl"):
        accum, batch = getattr(cfg, section).optim.grad_accum, _batch(cfg, section)
        if accum < 1 or batch % accum:
            raise ConfigError(f"{section}.optim.grad_accum={accum} must be >= 1 and divide the batch of {batch}")
    return cfg


def _batch(cfg, section: str) -> int:
    if section == "rl":
        return cfg.rl.prompts_per_step * cfg.rl.algo.group_size
    return getattr(cfg, section).batch_size


def parse_stages(text: str) -> tuple[str, ...]:
    """'sft,grpo' -> ('sft', 'grpo'); an unknown or empty selection is a ConfigError."""
    stages = tuple(s.strip() for s in text.split(",") if s.strip())
    if not stages:
        raise ConfigError(f"--stages {text!r} selects nothing; choose from {', '.join(STAGES)}")
    for s in stages:
        _choices("--stages", s, STAGES)
    return stages
