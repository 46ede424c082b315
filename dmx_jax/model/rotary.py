"""Rotary embeddings: the vision tower's 2-D (row, col) rotary and the text decoder's M-RoPE.

Both return cos/sin tables over the full head dim (the reference's `rotate_half` layout: the first and
second halves of the head dim share frequencies). Angles are computed in fp32 as in the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
    """1 / theta^(2i/dim) for i < dim/2, fp32 -> [dim/2]."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def vision_cos_sin(rot_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """rot_hw [..., P, 2] (row, col) -> cos, sin [..., P, head_dim].

    Rows and columns each use head_dim/4 frequencies; the angle layout is [rows, cols, rows, cols].
    """
    inv_freq = inverse_frequencies(head_dim // 2, theta)  # [hd/4]
    freqs = rot_hw.astype(jnp.float32)[..., None] * inv_freq  # [..., P, 2, hd/4]
    freqs = freqs.reshape(*rot_hw.shape[:-1], -1)  # [..., P, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def mrope_axis_of_band(mrope_section) -> np.ndarray:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each of the head_dim/2 frequency bands."""
    return np.concatenate([np.full((s,), i % 3) for i, s in enumerate(mrope_section)]).astype(np.int32)


def mrope_cos_sin(positions: jax.Array, head_dim: int, theta: float, mrope_section) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] (t, h, w ids) -> cos, sin [B, T, head_dim]; band i takes its axis' angle."""
    inv_freq = inverse_frequencies(head_dim, theta)  # [hd/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, hd/2]
    axis = jnp.asarray(mrope_axis_of_band(mrope_section))
    freqs = jnp.moveaxis(freqs, 0, -1)[..., jnp.arange(head_dim // 2), axis]  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rotate_half(x: jax.Array) -> jax.Array:
    h = x.shape[-1] // 2
    return jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., heads, hd] with cos/sin broadcast to [..., 1, hd]; math in fp32, result in x.dtype."""
    x32 = x.astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)
