"""Optimizer: AdamW with warmup + cosine/constant schedule, global-norm clipping, decay mask; parameter groups at
their own learning rates and frozen groups, both named by parameter-path prefixes ("vision", "vision.merger",
"lm_head"; paths as in BUILD_NOTES' parameter tree)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import jax
import optax

from dmx_jax.model.lora import adapter_count, is_adapter
from dmx_jax.sharding.rules import path_to_str


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    total_steps: int = 1000
    schedule: Literal["cosine", "constant"] = "cosine"
    end_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0  # <= 0 disables clipping
    grad_accum: int = 1  # micro-batches per step (the step splits the batch)


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule:
    if cfg.schedule == "constant":
        return (
            optax.join_schedules(
                [
                    optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1)),
                    optax.constant_schedule(cfg.learning_rate),
                ],
                [max(cfg.warmup_steps, 1)],
            )
            if cfg.warmup_steps
            else optax.constant_schedule(cfg.learning_rate)
        )
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            cfg.learning_rate,
            max(cfg.warmup_steps, 1),
            max(cfg.total_steps, cfg.warmup_steps + 1),
            end_value=cfg.learning_rate * cfg.end_lr_fraction,
        )
    raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {cfg.schedule!r}")


def _decay_mask(params):
    """Decay matrices only: no decay on norm scales and biases."""
    return jax.tree_util.tree_map_with_path(lambda p, _: not path_to_str(p).endswith((".scale", ".bias")), params)


def under(path: str, prefix: str) -> bool:
    """The parameter path lies under the prefix ('vision' covers 'vision.merger.fc1.kernel', not 'visionx')."""
    return path == prefix or path.startswith(prefix + ".")


def _adamw(cfg: OptimConfig, updates_per_step: int = 1) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg)
    if updates_per_step > 1:  # the schedule advances once per step, not once per update
        base, schedule = schedule, lambda count: base(count // updates_per_step)
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decay_mask)


@dataclasses.dataclass(frozen=True)
class Trainable:
    """Which parameters train, by dotted path: all but those under a `frozen` prefix; with adapters_only, the LoRA
    adapters (dmx_jax.model.lora) alone. The one rule the optimizer (no state for the rest) and the train step
    (no gradient for the rest) both read."""

    frozen: tuple[str, ...] = ()
    adapters_only: bool = False

    @classmethod
    def of(cls, params, frozen: Sequence[str] = ()) -> Trainable:
        """A model holding LoRA adapters trains them alone; otherwise everything but `frozen`."""
        return cls(tuple(frozen), adapters_only=adapter_count(params) > 0)

    @property
    def everything(self) -> bool:
        return not self.frozen and not self.adapters_only

    def __call__(self, path: str) -> bool:
        if self.adapters_only and not is_adapter(path):
            return False
        return not any(under(path, f) for f in self.frozen)


def make_optimizer(
    cfg: OptimConfig,
    *,
    lr_by_prefix: Mapping[str, float] | None = None,
    trainable: Trainable = Trainable(),
    updates_per_step: int = 1,
) -> optax.GradientTransformation:
    """AdamW (cfg) with global-norm clipping.

    updates_per_step: optimizer updates in one training step (GRPO: epochs x mini-batches); the learning-rate
    schedule (warmup, decay, total_steps) then counts steps, as verl and EasyR1 step their scheduler once per
    rollout.

    lr_by_prefix: parameters under a prefix train at that learning rate (the schedule's shape, cfg's warmup and
    decay), the longest matching prefix winning. trainable: the parameters it rejects do not train: their
    gradients are zeroed before clipping (the norm counts the trained parameters only, as when they take no
    gradient at all) and the optimizer holds no state for them."""
    lr_by_prefix = dict(lr_by_prefix or {})
    clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    if not lr_by_prefix and trainable.everything:
        return optax.chain(*clip, _adamw(cfg, updates_per_step))
    freezes = not trainable.everything

    def label(path, _):
        name = path_to_str(path)
        if not trainable(name):
            return "frozen"
        matches = [p for p in lr_by_prefix if under(name, p)]
        return max(matches, key=len) if matches else "default"

    labels = lambda params: jax.tree_util.tree_map_with_path(label, params)
    is_frozen = lambda params: jax.tree.map(lambda lb: lb == "frozen", labels(params))
    groups = {
        "default": _adamw(cfg, updates_per_step),
        **({"frozen": optax.set_to_zero()} if freezes else {}),
        **{p: _adamw(dataclasses.replace(cfg, learning_rate=lr), updates_per_step) for p, lr in lr_by_prefix.items()},
    }
    zero_frozen = [optax.masked(optax.set_to_zero(), is_frozen)] if freezes else []
    return optax.chain(*zero_frozen, *clip, optax.multi_transform(groups, labels))
