"""LoRA adapters on the decoder's projections (Hu et al. 2021), as plain leaves of the layer stack.

A target projection `W` (q, k, v, o, gate, up, down; kernels stacked over layers) gains `lora_a` [L, in..., r] and
`lora_b` [L, r, out...] beside its kernel, and computes x W + (alpha / r) (x A) B. B starts at zero, so a model with
fresh adapters gives the base model's outputs exactly. The forward reads the adapters where it reads the kernel
(one forward path); training freezes everything else (`is_adapter`); the GRPO reference is the same parameters
with B zeroed (`disable_adapters`: no second copy of the base); export merges them into the kernels or writes
them in the PEFT layout (dmx_jax.hf). Dropout (PEFT's lora_dropout) acts on the adapter's input alone,
(dropout(x) A) B, and only in a forward given a dropout key.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
GROUP = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "gate": "mlp", "up": "mlp", "down": "mlp"}
ADAPTER_LEAVES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank 0: no adapters. alpha: the update is scaled by alpha / rank (PEFT's lora_alpha). dropout: the rate
    of inverted dropout on each adapter's input (PEFT's lora_dropout), active only in a forward given a dropout
    key, which the supervised loss passes. GRPO's log-prob passes and update run without one, as the ratio
    pi / pi_old must compare one deterministic function of the parameters."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    dropout: float = 0.0

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank must be >= 0 (0: no adapters), got {self.rank}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty subset of {TARGETS}, got {self.targets}")
        if self.rank and not self.alpha > 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0


def kernel_split(name: str) -> int:
    """How many leading axes (after the layer axis) of the target's kernel are its input: o [L, N, H, D] has two."""
    return 2 if name == "o" else 1


def init_adapters(kernels: dict, lora: LoraConfig, key: jax.Array, dtype=jnp.float32) -> dict:
    """{(group, target, 'lora_a' | 'lora_b'): array} for the stacked kernels {'q': [L, ...], ...}, group being
    the target's layer group ('attn' | 'mlp'): A [L, in..., r] ~ N(0, 1 / in_features) (PEFT's scale),
    B [L, r, out...] = 0."""
    out: dict = {}
    for i, name in enumerate(lora.targets):
        w = kernels[name]
        split = 1 + kernel_split(name)
        ins, outs = w.shape[1:split], w.shape[split:]
        fan_in = math.prod(ins)
        a = jax.random.normal(jax.random.fold_in(key, i), (w.shape[0], *ins, lora.rank)) / fan_in**0.5
        out[GROUP[name], name, "lora_a"] = a.astype(dtype)
        out[GROUP[name], name, "lora_b"] = jnp.zeros((w.shape[0], lora.rank, *outs), dtype)
    return out


def projection_key(key: jax.Array | None, name: str) -> jax.Array | None:
    """A layer's dropout key folded with the target's index: each projection draws its own mask (None stays None)."""
    return None if key is None else jax.random.fold_in(key, TARGETS.index(name))


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: each entry of x kept with probability 1 - rate and scaled by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def delta(
    x: jax.Array, p: dict, n_in: int, scale: float, key: jax.Array | None = None, rate: float = 0.0
) -> jax.Array | None:
    """The adapter's term (dropout(x) A) B * scale for one layer's projection dict p (None without adapters);
    x [..., in] with n_in input axes: a [in..., r], b [r, out...]. Dropout only with a key and rate > 0."""
    if "lora_a" not in p:
        return None
    if key is not None and rate > 0:
        x = dropout(x, rate, key)
    a, b = p["lora_a"].astype(x.dtype), p["lora_b"].astype(x.dtype)
    xa = jnp.tensordot(x, a, axes=n_in)  # [..., r]
    return jnp.tensordot(xa, b, axes=1) * jnp.asarray(scale, x.dtype)  # [..., out...]


def is_adapter(path: str) -> bool:
    """A dotted parameter path that names an adapter leaf."""
    return path.rsplit(".", 1)[-1] in ADAPTER_LEAVES


def disable_adapters(params: dict) -> dict:
    """The same tree with every lora_b zeroed: the base model's function, sharing the base arrays."""

    def visit(tree):
        return {
            k: (jnp.zeros_like(v) if k == "lora_b" else visit(v) if isinstance(v, dict) else v) for k, v in tree.items()
        }

    return visit(params)


def adapters_of(params: dict) -> dict:
    """The adapter leaves alone (every lora_a / lora_b), nested as in `params`."""

    def visit(tree):
        out = {}
        for k, v in tree.items():
            if k in ("lora_a", "lora_b"):
                out[k] = v
            elif isinstance(v, dict) and (sub := visit(v)):
                out[k] = sub
        return out

    return visit(params)


def with_adapters(params: dict, adapters: dict) -> dict:
    """`params` with its adapter leaves taken from `adapters` (adapters_of's nesting), sharing every base array."""

    def visit(tree, ad):
        return {
            k: ad[k] if k in ("lora_a", "lora_b") else visit(v, ad.get(k, {})) if isinstance(v, dict) else v
            for k, v in tree.items()
        }

    return visit(params, adapters)


def merge_adapters(params: dict, lora: LoraConfig) -> dict:
    """Kernels with their adapters folded in (W + scale A B) and the adapter leaves removed: a plain model."""

    def visit(tree):
        if isinstance(tree, dict) and "lora_a" in tree:
            a, b, w = tree["lora_a"], tree["lora_b"], tree["kernel"]  # [L, in..., r], [L, r, out...]
            update = (
                jnp.einsum(
                    "lir,lro->lio", a.reshape(a.shape[0], -1, a.shape[-1]), b.reshape(b.shape[0], b.shape[1], -1)
                )
                * lora.scale
            )
            merged = (w.astype(jnp.float32) + update.reshape(w.shape)).astype(w.dtype)
            return {**{k: v for k, v in tree.items() if k not in ADAPTER_LEAVES}, "kernel": merged}
        return {k: visit(v) for k, v in tree.items()} if isinstance(tree, dict) else tree

    return visit(params)


def cast_base(params: dict, dtype) -> dict:
    """Every floating leaf but the adapters in `dtype` (the frozen base kept in the compute dtype)."""
    dtype = jnp.dtype(dtype)
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x if _is_adapter_path(p) or not jnp.issubdtype(x.dtype, jnp.floating) else x.astype(dtype), params
    )


def _is_adapter_path(path) -> bool:
    return str(getattr(path[-1], "key", path[-1])) in ADAPTER_LEAVES


def adapter_count(params: dict) -> int:
    return sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(params) if _is_adapter_path(p))
