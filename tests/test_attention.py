"""Memory-efficient attention (dmx_jax.model.attention): chunked online softmax == dense (fp32, 1e-5) on
left padding, GQA, vision segments and KV-cache decoding, and through the whole model with images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dmx_jax.model import Qwen25VL, init_cache, rope_index, vision_inputs
from dmx_jax.model.attention import (
    Mask,
    attention,
    causal_mask,
    local_segment_attention,
    segment_attention,
    segment_mask,
    splash_attention,
)
from dmx_jax.model.config import tiny

TOL = 1e-5


def _qkv(b, t, s, n, k, h, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(r.normal(size=shape), jnp.float32)
    return f(b, t, n, h), f(b, s, k, h), f(b, s, k, h)


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_chunked_equals_dense_causal_left_padded(block):
    q, k, v = _qkv(3, 37, 37, 4, 2, 8)
    key_mask = jnp.asarray(np.arange(37)[None] >= np.array([[0], [5], [20]]), jnp.int32)  # left padding
    mask = causal_mask(key_mask, 0, 37)
    want = attention(q, k, v, mask, "xla")
    got = attention(q, k, v, mask, "chunked", block)
    assert float(jnp.abs(got - want).max()) <= TOL  # padded query rows too (uniform over keys in both)


def test_chunked_equals_dense_with_cache_prefill_and_decode():
    """Queries at slots [index, index+T) over S cache slots; keys past the written slots masked causally."""
    q, k, v = _qkv(2, 1, 50, 4, 1, 8, seed=1)
    key_mask = jnp.asarray(np.arange(50)[None] >= np.array([[0], [7]]), jnp.int32)
    for index, t in ((0, 1), (23, 1), (49, 1)):
        mask = causal_mask(key_mask, index, t)
        assert float(jnp.abs(attention(q, k, v, mask, "chunked", 8) - attention(q, k, v, mask, "xla")).max()) <= TOL
    q6, _, _ = _qkv(2, 6, 50, 4, 1, 8, seed=2)
    mask = causal_mask(key_mask, 11, 6)
    assert float(jnp.abs(attention(q6, k, v, mask, "chunked", 16) - attention(q6, k, v, mask, "xla")).max()) <= TOL


def test_chunked_equals_dense_segments_and_gradients():
    q, k, v = _qkv(1, 40, 40, 2, 2, 16, seed=3)
    seg = jnp.asarray(np.repeat([0, 1, 2, 3, 4], [8, 8, 4, 12, 8]))
    mask = segment_mask(seg)
    f = lambda impl: lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, mask, impl, 7)))
    want, gw = jax.value_and_grad(f("xla"), argnums=(0, 1, 2))(q, k, v)
    got, gg = jax.value_and_grad(f("chunked"), argnums=(0, 1, 2))(q, k, v)
    assert abs(float(got - want)) <= TOL * 40
    for a, b in zip(gg, gw):
        assert float(jnp.abs(a - b).max()) <= TOL


def test_unknown_implementation_and_config_validation():
    q, k, v = _qkv(1, 4, 4, 2, 2, 4)
    with pytest.raises(ValueError, match="unknown attention"):
        attention(q, k, v, Mask(), "flash")
    with pytest.raises(ValueError, match="attention"):
        tiny().replace(attention="flash")
    with pytest.raises(ValueError, match="vision_remat"):
        tiny().replace(vision_remat="most")
    with pytest.raises(ValueError, match="multiple of 128"):
        tiny().replace(attention="splash", attention_block=100)


def test_splash_interpret_equals_dense_causal_padded():
    """The Pallas kernel in interpret mode (CPU): causal + left padding as segment ids, GQA."""
    q, k, v = _qkv(2, 128, 128, 4, 2, 64, seed=4)
    key_mask = jnp.asarray(np.arange(128)[None] >= np.array([[0], [30]]), jnp.int32)
    mask = causal_mask(key_mask, 0, 128)
    want = attention(q, k, v, mask, "xla")
    got = splash_attention(q, k, v, mask, 128, interpret=True)
    valid = np.asarray(key_mask, bool)
    assert float(jnp.abs(got - want).max(axis=(2, 3))[valid].max()) <= 1e-4


def _images_batch(cfg):
    """Two left-padded rows with images of different sizes (several windows, a full-attention block)."""
    m = cfg.vision.spatial_merge_size
    grid = np.array([[1, 8, 12], [1, 4, 8]])
    r = np.random.default_rng(0)
    pv = r.normal(size=(int(np.prod(grid, -1).sum()), cfg.vision.patch_dim)).astype(np.float32)
    n = [int(np.prod(g)) // m**2 for g in grid]
    img = lambda k: [cfg.vision_start_token_id] + [cfg.image_token_id] * k + [cfg.vision_end_token_id]
    rows = [[1, 5] + img(n[0]) + [6, 7, 8], [1] + img(n[1]) + [9, 10, 11, 12]]  # decode steps are text
    t = max(map(len, rows))
    ids = np.array([[0] * (t - len(r)) + r for r in rows])
    mask = np.array([[0] * (t - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, pv, grid


def test_model_forward_and_kv_cache_chunked_equals_xla():
    cfg = tiny()
    model = Qwen25VL(cfg, nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    ids, mask, pv, grid = _images_batch(cfg)
    pos, _ = rope_index(ids, grid, mask, spatial_merge_size=2, image_token_id=cfg.image_token_id)
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    assert vin["window_seg"].max() > 2  # several windows

    def run(impl):
        graphdef = nnx.graphdef(
            nnx.eval_shape(lambda: Qwen25VL(cfg.replace(attention=impl, attention_block=16), nnx.Rngs(0)))
        )

        @jax.jit
        def step(state, ids, pos, key_mask, cache, pv=None, vin=None):
            return nnx.merge(graphdef, state).forward(ids, pos, key_mask, pv, vin, cache=cache)

        full = np.asarray(step(state, ids, pos, mask, None, pv, vin)[0])
        b, t = ids.shape
        t0 = t - 3
        cache = init_cache(cfg.text, b, t)
        logits, cache = step(state, ids[:, :t0], pos[:, :, :t0], mask, cache, pv, vin)
        got = [np.asarray(logits)]
        for i in range(t0, t):
            logits, cache = step(state, ids[:, i : i + 1], pos[:, :, i : i + 1], mask, cache)
            got.append(np.asarray(logits))
        return full, np.concatenate(got, axis=1)

    full_x, cached_x = run("xla")
    full_c, cached_c = run("chunked")
    valid = mask.astype(bool)
    assert float(np.abs(full_c - full_x)[valid].max()) <= TOL
    assert float(np.abs(cached_c - cached_x)[valid].max()) <= TOL
    assert float(np.abs(cached_c - full_x)[valid].max()) <= TOL


def test_local_segment_attention_equals_dense_on_vision_windows():
    """Window blocks of the vision tower computed per query block over a bounded key range == dense masked."""
    cfg = tiny().vision
    vin = vision_inputs(np.array([[1, 8, 12], [1, 4, 8], [1, 12, 4]]), cfg, pad_to=256)
    seg = jnp.asarray(vin["window_seg"])
    window = (cfg.window_size // cfg.spatial_merge_size // cfg.patch_size) ** 2 * cfg.spatial_merge_size**2
    assert np.bincount(np.asarray(seg))[:-1].max() <= window
    q, k, v = (x[0] for x in _qkv(1, 256, 256, 2, 2, 16, seed=7))
    want = attention(q[None], k[None], v[None], segment_mask(seg), "xla")[0]
    real = np.asarray(seg) != np.asarray(seg).max()  # padding patches are dropped after the merger
    for block in (8, 16, 32):
        got = local_segment_attention(q, k, v, seg, window, block)
        assert float(jnp.abs(got - want)[real].max()) <= TOL


def test_segment_attention_equals_dense_per_image_with_gradients_and_under_vmap():
    """The vision tower's full attention with several images in a row (ids non-decreasing, padding patches a
    segment of their own): equal to dense masked attention in values and gradients, at any block size, on one
    row and on rows vmapped as the per-row layout runs them (there the block skip is a select)."""
    cfg = tiny().vision
    vin = vision_inputs(np.array([[1, 8, 12], [1, 4, 8], [1, 12, 4]]), cfg, pad_to=256)
    seg = jnp.asarray(vin["full_seg"])
    assert len(np.unique(np.asarray(seg))) == 4  # three images + padding
    q, k, v = (x[0] for x in _qkv(1, 256, 256, 2, 2, 16, seed=3))
    dense = lambda q, k, v, s: attention(q[None], k[None], v[None], segment_mask(s), "xla")[0]
    want = dense(q, k, v, seg)
    loss = lambda f: lambda q, k, v, s: (f(q, k, v, s) ** 2).sum()
    want_grads = jax.grad(loss(dense), argnums=(0, 1, 2))(q, k, v, seg)
    for block in (7, 32, 100, 256):  # 256: one block, the dense path
        got = segment_attention(q, k, v, seg, block)
        assert float(jnp.abs(got - want).max()) <= TOL, block
        sa = lambda q, k, v, s, b=block: segment_attention(q, k, v, s, b)
        grads = jax.grad(loss(sa), argnums=(0, 1, 2))(q, k, v, seg)
        for g, w in zip(grads, want_grads):
            assert float(jnp.abs(g - w).max()) <= 1e-4, block
    rows = jnp.stack([seg, jnp.sort(jnp.asarray(np.arange(256) // 100, jnp.int32))])  # two layouts, one batch
    qs, ks, vs = (jnp.stack([x, x[::-1]]) for x in (q, k, v))
    got = jax.vmap(lambda q, k, v, s: segment_attention(q, k, v, s, 32))(qs, ks, vs, rows)
    assert float(jnp.abs(got - jax.vmap(dense)(qs, ks, vs, rows)).max()) <= TOL
