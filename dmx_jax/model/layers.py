"""Building blocks as pure functions over arrays, and a module that holds a nested dict of Params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dmx_jax.model import lora
from dmx_jax.model.rotary import apply_rotary, rotate_half  # noqa: F401  (re-exported)
from dmx_jax.sharding.rules import constrain


class ParamTree(nnx.Module):
    """Holds nnx.Params at the attribute paths of a nested dict of arrays (paths = the sharding table's)."""

    def __init__(self, tree: dict):
        for name, value in tree.items():
            setattr(self, name, ParamTree(value) if isinstance(value, dict) else nnx.Param(value))


def values(module: nnx.Module) -> dict:
    """The module's parameters as a nested dict of arrays (traceable inside jit)."""
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Qwen2 RMSNorm: normalise in fp32, cast back, then scale."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(dtype) * x32.astype(dtype)


def activation(name: str):
    if name == "silu":
        return jax.nn.silu
    if name in ("gelu", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=name.endswith("tanh"))
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ValueError(f"unsupported activation {name!r}")


def linear(x, p: dict, lora_scale: float = 0.0, lora_key: jax.Array | None = None, lora_rate: float = 0.0) -> jax.Array:
    """x @ kernel, + bias and + the LoRA term (dmx_jax.model.lora, its input dropped out with lora_key at
    lora_rate) when p holds them."""
    y = x @ p["kernel"].astype(x.dtype)
    if "bias" in p:
        y = y + p["bias"].astype(x.dtype)
    d = lora.delta(x, p, 1, lora_scale, lora_key, lora_rate)
    return y if d is None else y + d


def swiglu(
    x,
    p: dict,
    act,
    hidden_axes: tuple | None = None,
    lora_scale: float = 0.0,
    lora_key: jax.Array | None = None,
    lora_rate: float = 0.0,
) -> jax.Array:
    """down(act(gate(x)) * up(x)); biases and adapters used when present. hidden_axes: logical axes of the
    hidden activation (sharding constraint under a context mesh). lora_key: the layer's adapter dropout key."""
    drop = lambda name: (lora.projection_key(lora_key, name), lora_rate)
    g, u = linear(x, p["gate"], lora_scale, *drop("gate")), linear(x, p["up"], lora_scale, *drop("up"))
    if hidden_axes is not None:
        g, u = constrain(g, hidden_axes), constrain(u, hidden_axes)
    return linear(act(g) * u, p["down"], lora_scale, *drop("down"))


def remat_policy(name: str):
    if name == "none":
        return None
    if name == "full":
        return jax.checkpoint_policies.nothing_saveable
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "offload":  # save matmul outputs, but in host memory (TPU/GPU with pinned host memory)
        return jax.checkpoint_policies.offload_dot_with_no_batch_dims(offload_src="device", offload_dst="pinned_host")
    raise ValueError(f"unknown remat policy {name!r}")
