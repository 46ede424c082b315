"""Chunked cross-entropy equals the direct one (value and gradient) and a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.training.loss import cross_entropy_from_hidden, shift_targets


def _numpy_ce(hidden, head, targets, weights):
    logits = hidden.astype(np.float64) @ head.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return (nll * weights).sum(), weights.sum()


def test_chunked_equals_direct_and_numpy():
    rng = np.random.default_rng(0)
    b, t, d, v = 2, 13, 8, 37
    hidden = rng.normal(size=(b, t, d)).astype(np.float32)
    head = rng.normal(size=(d, v)).astype(np.float32)
    targets = rng.integers(0, v, size=(b, t)).astype(np.int32)
    weights = (rng.random((b, t)) > 0.3).astype(np.float32)
    ref_sum, ref_cnt = _numpy_ce(hidden, head, targets, weights)
    for chunk in (0, 4, 5, 13):
        s, c = cross_entropy_from_hidden(jnp.asarray(hidden), jnp.asarray(head), targets, weights, chunk_size=chunk)
        np.testing.assert_allclose(float(s), ref_sum, rtol=1e-5)
        assert float(c) == ref_cnt

    def f(h, w, chunk):
        s, c = cross_entropy_from_hidden(h, w, targets, weights, chunk_size=chunk)
        return s / c

    g_direct = jax.grad(f, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(head), 0)
    g_chunk = jax.grad(f, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(head), 4)
    for a, b_ in zip(g_direct, g_chunk):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), atol=1e-6)


def test_shift_targets():
    ids = jnp.array([[5, 6, 7, 8]])
    mask = jnp.array([[0, 0, 1, 1]])
    tg, w = shift_targets(ids, mask)
    assert tg.tolist() == [[6, 7, 8, 0]]
    assert w.tolist() == [[0, 1, 1, 0]]
