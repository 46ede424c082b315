"""The FLOP formula (dmx_jax.perf.flops) == the dot products XLA is asked to run.

Reference: every dot_general in the jaxpr of the jitted forward, 2 x (output size) x (contracted size),
scan bodies once per iteration, and of each lax.cond only the branch its (constant-folded) index selects: the
vision tower picks full or window attention per block from a scanned constant flag.
The formula's executed-attention mode must equal it exactly;
its model mode (causal, windowed) must be smaller by exactly the masked-out attention work.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend.core import Literal

from dmx_jax.model import Qwen25VL, rope_index, vision_inputs
from dmx_jax.model.config import tiny
from dmx_jax.perf.flops import batch_train_flops, forward_flops, mfu, peak_flops_per_device, train_flops


def _inner(sub, args: list) -> tuple:
    """(jaxpr, known values of its variables): a closed jaxpr's consts and the callers' known arguments."""
    inner = getattr(sub, "jaxpr", sub)
    env = dict(zip(inner.constvars, getattr(sub, "consts", ())))
    env.update({v: a for v, a in zip(inner.invars, args) if a is not None})
    return inner, env


def dot_flops(jaxpr, env: dict | None = None) -> float:
    """2 x out x contracted of every dot_general that runs: scan bodies once per iteration and, in each, only the
    cond branch its index selects. The index must be known: constants and the scanned slices of constants (the
    vision tower's per-block full/window flag) are folded through small ops; an unknown index fails."""
    if hasattr(jaxpr, "consts"):
        jaxpr, env = _inner(jaxpr, [])
    env = dict(env or {})
    read = lambda v: v.val if isinstance(v, Literal) else env.get(v)
    total = 0.0
    for eqn in jaxpr.eqns:
        name, args = eqn.primitive.name, [read(v) for v in eqn.invars]
        assert name != "while", "a while loop has no static trip count"
        if name == "dot_general":
            (lc, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
        elif name == "scan":
            nc, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
            for i in range(eqn.params["length"]):
                step = (
                    args[:nc] + [None] * ncarry + [None if x is None else np.asarray(x)[i] for x in args[nc + ncarry :]]
                )
                total += dot_flops(*_inner(eqn.params["jaxpr"], step))
        elif name == "cond":
            assert args[0] is not None, "a cond whose branch index is not known"
            branches = eqn.params["branches"]
            taken = branches[int(np.clip(int(np.asarray(args[0])), 0, len(branches) - 1))]
            total += dot_flops(*_inner(taken, args[1:]))
        else:
            params = [
                s for value in eqn.params.values() for s in (value if isinstance(value, (tuple, list)) else (value,))
            ]
            subs = [s for s in params if hasattr(getattr(s, "jaxpr", s), "eqns")]
            for sub in subs:  # jit, remat, custom_jvp/vjp: run once
                same = len(getattr(sub, "jaxpr", sub).invars) == len(args)
                total += dot_flops(*_inner(sub, args if same else []))
            if (
                not subs
                and all(a is not None for a in args)
                and sum(math.prod(v.aval.shape) for v in eqn.outvars) <= 4096
            ):
                try:  # fold small constant arithmetic
                    out = eqn.primitive.bind(*args, **eqn.params)
                except Exception:
                    continue
                outs = out if eqn.primitive.multiple_results else [out]
                env.update({v: np.asarray(o) for v, o in zip(eqn.outvars, outs)})
    return total


def test_forward_flops_equal_the_jaxpr_dot_products():
    cfg = tiny()  # 3 vision blocks, block 1 full: taking the wrong branch changes the sum
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, depth=3, fullatt_block_indexes=(1,)))
    model = Qwen25VL(cfg, nnx.Rngs(0))
    grids = np.array([[1, 8, 8], [1, 12, 12]])  # two images, packed: 208 patches > 128 + 2 windows of 16, so
    # window blocks run the bounded-range kernel and cost less than the full-attention block (a wrong branch shows)
    m2 = cfg.vision.spatial_merge_size**2
    n_img = [int(np.prod(g)) // m2 for g in grids]
    row0 = [5, cfg.vision_start_token_id] + [cfg.image_token_id] * n_img[0] + [cfg.vision_end_token_id, 7, 8]
    row1 = [9, cfg.vision_start_token_id] + [cfg.image_token_id] * n_img[1] + [cfg.vision_end_token_id]
    seq = max(len(row0), len(row1)) + 3
    ids = np.zeros((2, seq), np.int32)
    mask = np.zeros_like(ids)
    for b, row in enumerate((row0, row1)):
        ids[b, seq - len(row) :], mask[b, seq - len(row) :] = row, 1  # left padded
    pos, _ = rope_index(
        ids, grids, mask, spatial_merge_size=cfg.vision.spatial_merge_size, image_token_id=cfg.image_token_id
    )
    patches = int(np.prod(grids, axis=1).sum())
    patch_dim = cfg.vision.in_channels * cfg.vision.temporal_patch_size * cfg.vision.patch_size**2
    pixels = jnp.zeros((patches, patch_dim), jnp.float32)
    vin = jax.tree.map(jnp.asarray, vision_inputs(grids, cfg.vision))
    jaxpr = jax.make_jaxpr(lambda i, p, a, px: model.forward(i, p, a, px, vin)[0])(
        jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), pixels
    )
    counted = dot_flops(jaxpr)

    kw = dict(text_tokens=ids.size, seq_len=seq, image_grids=grids.tolist())
    executed = forward_flops(cfg, attention="executed", **kw)
    assert executed.total == counted, (executed, counted)

    useful = forward_flops(cfg, **kw)
    t = cfg.text
    head_dim = t.hidden_size // t.num_attention_heads
    causal_saving = 4 * t.num_attention_heads * head_dim * (seq - (seq + 1) / 2) * ids.size * t.num_hidden_layers
    assert executed.text - useful.text == causal_saving
    assert useful.vision < executed.vision and useful.lm_head == executed.lm_head
    assert useful.merger == executed.merger > 0
    assert train_flops(cfg, **kw).total == 3 * useful.total


def test_batch_flops_mfu_and_peaks():
    cfg = tiny()
    arrays = {
        "input_ids": np.zeros((2, 10), np.int32),
        "attention_mask": np.array([[1] * 10, [0] * 4 + [1] * 6]),
        "image_grid_thw": np.array([[[1, 4, 4]], [[0, 0, 0]]]),
    }
    want = train_flops(cfg, text_tokens=16, seq_len=10, image_grids=[[1, 4, 4]]).total
    assert batch_train_flops(cfg, arrays) == want
    ids = np.zeros((2, 10), np.int32)
    ids[0, 2:6] = cfg.image_token_id  # 4 merged tokens -> a (1, 4, 4) grid
    assert batch_train_flops(cfg, {"input_ids": ids, "attention_mask": arrays["attention_mask"]}) == want
    assert peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_per_device("TPU v5 lite") == 197e12
    assert peak_flops_per_device("cpu") is None and mfu(1e12, 1.0, 1, None) is None
    assert mfu(989e12, 2.0, 1, 989e12) == 0.5
