"""Qwen2.5-VL vision encoder: patch embedding, 2-D rotary, window/full attention blocks, patch merger.

Host-side metadata (`vision_inputs`, numpy) follows the reference exactly: patches arrive in merge-window
order, blocks run on a window-permuted sequence, and the merged output is permuted back.
Windows and images are expressed as segment ids (attention allowed within a segment), which keeps shapes
static: padded patches form their own segment and are dropped after the merger.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.model.attention import attention, local_segment_attention, segment_attention, segment_mask
from dmx_jax.model.config import VisionConfig
from dmx_jax.model.layers import ParamTree, activation, apply_rotary, remat_policy, rms_norm, swiglu, values
from dmx_jax.model.rotary import vision_cos_sin
from dmx_jax.sharding.rules import constrain

PATCHES = ("act_patches", "act_embed")  # one row's packed patches (rows are the vmapped batch dimension)


def vision_inputs(image_grid_thw, cfg: VisionConfig, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Per-patch metadata for `VisionEncoder` (numpy, host side; all arrays of static length P).

    Returns: rot_hw [P,2] int32 (row, col) of each patch in window order; window_seg / full_seg [P] int32
    segment ids in window order; window_index [P/m^2] (merged-unit permutation), reverse_index [P/m^2].
    """
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    m = cfg.spatial_merge_size
    unit = m * m
    win = cfg.window_size // m // cfg.patch_size
    rows, cols, full_seg, window_index, window_seg = [], [], [], [], []
    base = 0
    seg_id = 0
    for img, (t, h, w) in enumerate(grid):
        if h % m or w % m:
            raise ValueError(f"image {img}: grid {h}x{w} is not divisible by spatial_merge_size {m}")
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // m, m, w // m, m)
        rows.append(np.tile(hh.reshape(block).transpose(0, 2, 1, 3).ravel(), t))
        cols.append(np.tile(ww.reshape(block).transpose(0, 2, 1, 3).ravel(), t))
        frames_before = int(grid[:img, 0].sum())
        full_seg.append(np.repeat(np.arange(t) + frames_before, h * w))  # full attention: one segment per frame
        lh, lw = h // m, w // m
        index = np.arange(t * lh * lw).reshape(t, lh, lw)
        ph, pw = win - lh % win, win - lw % win
        nh, nw = (lh + ph) // win, (lw + pw) // win
        padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, win * win)
        for window in padded.reshape(-1, win * win):
            kept = window[window != -100]
            if kept.size:
                window_index.append(kept + base)
                window_seg.append(np.full(kept.size * unit, seg_id))
                seg_id += 1
        base += t * lh * lw
    n_patches = int(sum(int(t) * int(h) * int(w) for t, h, w in grid))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    full_seg = np.concatenate(full_seg) if full_seg else np.zeros(0, np.int64)
    window_index = np.concatenate(window_index) if window_index else np.zeros(0, np.int64)
    window_seg = np.concatenate(window_seg) if window_seg else np.zeros(0, np.int64)
    # window order at patch level
    patch_perm = (window_index[:, None] * unit + np.arange(unit)[None]).ravel()
    rows, cols, full_seg = rows[patch_perm], cols[patch_perm], full_seg[patch_perm]
    if pad_to is not None:
        if pad_to < n_patches or pad_to % unit:
            raise ValueError(f"pad_to={pad_to} must be >= {n_patches} patches and a multiple of {unit}")
        extra = pad_to - n_patches
        pad_seg = max(int(full_seg.max(initial=-1)), int(window_seg.max(initial=-1))) + 1
        rows, cols = np.pad(rows, (0, extra)), np.pad(cols, (0, extra))
        full_seg = np.pad(full_seg, (0, extra), constant_values=pad_seg)
        window_seg = np.pad(window_seg, (0, extra), constant_values=pad_seg)
        n_units = n_patches // unit
        window_index = np.concatenate([window_index, np.arange(n_units, pad_to // unit)])
    return {
        "rot_hw": np.stack([rows, cols], -1).astype(np.int32),
        "window_seg": window_seg.astype(np.int32),
        "full_seg": full_seg.astype(np.int32),
        "window_index": window_index.astype(np.int32),
        "reverse_index": np.argsort(window_index, kind="stable").astype(np.int32),
    }


def _block(x, p, is_full, cos, sin, segs, cfg: VisionConfig, impl: str = "xla", block: int = 512):
    x = constrain(x, PATCHES)
    h = rms_norm(x, p["norm1"]["scale"], 1e-6)
    qkv = jnp.einsum("pd,dcnh->pcnh", h, p["attn"]["qkv"]["kernel"].astype(h.dtype)) + p["attn"]["qkv"]["bias"].astype(
        h.dtype
    )
    qkv = constrain(qkv, ("act_patches", None, "act_vision_heads", None))
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [P, n, hd]
    q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
    window = (cfg.window_size // cfg.spatial_merge_size // cfg.patch_size) ** 2 * cfg.spatial_merge_size**2

    def full_attention(q, k, v):  # one segment per image
        if impl == "xla":  # exact, only the blocks an image spans (a row of k images costs ~P^2 / k)
            return segment_attention(q, k, v, segs[1], min(block, 256))
        return attention(q[None], k[None], v[None], segment_mask(segs[1]), impl, block)[0]

    def window_attention(q, k, v):  # windows of <= `window` patches: key blocks around each query block
        return local_segment_attention(q, k, v, segs[0], window)

    o = jax.lax.cond(is_full, full_attention, window_attention, q, k, v)  # [P, n, hd]
    o = jnp.einsum("pnh,nhd->pd", o, p["attn"]["proj"]["kernel"].astype(o.dtype)) + p["attn"]["proj"]["bias"].astype(
        o.dtype
    )
    x = constrain(x + o, PATCHES)
    x = x + swiglu(
        rms_norm(x, p["norm2"]["scale"], 1e-6), p["mlp"], activation(cfg.hidden_act), ("act_patches", "act_vision_mlp")
    )
    return constrain(x, PATCHES)


class VisionEncoder(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        d, f, n, hd, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.head_dim, cfg.depth
        m2 = cfg.spatial_merge_size**2
        init = lambda *shape, scale=0.02: (jax.random.normal(rngs.params(), shape) * scale).astype(param_dtype)
        ones = lambda *shape: jnp.ones(shape, param_dtype)
        zeros = lambda *shape: jnp.zeros(shape, param_dtype)
        self.patch_embed = ParamTree({"kernel": init(cfg.patch_dim, d)})
        self.blocks = ParamTree(
            {
                "norm1": {"scale": ones(L, d)},
                "norm2": {"scale": ones(L, d)},
                "attn": {
                    "qkv": {"kernel": init(L, d, 3, n, hd), "bias": zeros(L, 3, n, hd)},
                    "proj": {"kernel": init(L, n, hd, d), "bias": zeros(L, d)},
                },
                "mlp": {
                    "gate": {"kernel": init(L, d, f), "bias": zeros(L, f)},
                    "up": {"kernel": init(L, d, f), "bias": zeros(L, f)},
                    "down": {"kernel": init(L, f, d), "bias": zeros(L, d)},
                },
            }
        )
        self.merger = ParamTree(
            {
                "ln_q": {"scale": ones(d)},
                "fc1": {"kernel": init(d * m2, d * m2), "bias": zeros(d * m2)},
                "fc2": {"kernel": init(d * m2, cfg.out_hidden_size), "bias": zeros(cfg.out_hidden_size)},
            }
        )

    def rotary(self, rot_hw: jax.Array) -> tuple[jax.Array, jax.Array]:
        return vision_cos_sin(rot_hw, self.cfg.head_dim, self.cfg.rope_theta)

    def __call__(
        self,
        pixel_values: jax.Array,
        vin: dict,
        dtype=jnp.float32,
        remat: str = "none",
        attention: str = "xla",
        attention_block: int = 512,
    ) -> jax.Array:
        """pixel_values [P, C*T*p*p] in merge-window order -> merged features [P/m^2, D] in the same order.

        attention "splash" runs "chunked" here (the tower is vmapped over rows; segments, not causal)."""
        cfg = self.cfg
        unit = cfg.spatial_merge_size**2
        p_embed = values(self.patch_embed)
        x = pixel_values.astype(dtype) @ p_embed["kernel"].astype(dtype)  # [P, d]
        P = x.shape[0]
        x = x.reshape(P // unit, unit, -1)[vin["window_index"]].reshape(P, -1)  # window order
        cos, sin = self.rotary(vin["rot_hw"])
        segs = (vin["window_seg"], vin["full_seg"])
        impl = "chunked" if attention == "splash" else attention
        full = np.zeros(cfg.depth, bool)
        full[[i for i in cfg.fullatt_block_indexes if i < cfg.depth]] = True

        def body(h, xs):
            p, is_full = xs
            return _block(h, p, is_full, cos, sin, segs, cfg, impl, attention_block), None

        policy = remat_policy(remat)
        if policy is not None:
            body = jax.checkpoint(body, policy=policy)
        blocks = jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, values(self.blocks)
        )
        x, _ = jax.lax.scan(body, x, (blocks, jnp.asarray(full)))
        mp = values(self.merger)
        x = rms_norm(x, mp["ln_q"]["scale"], 1e-6).reshape(P // unit, -1)
        x = jax.nn.gelu(x @ mp["fc1"]["kernel"].astype(dtype) + mp["fc1"]["bias"].astype(dtype), approximate=False)
        x = constrain(x, ("act_patches", "act_vision_mlp"))
        x = constrain(x @ mp["fc2"]["kernel"].astype(dtype) + mp["fc2"]["bias"].astype(dtype), PATCHES)
        return x[vin["reverse_index"]]
