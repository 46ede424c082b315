"""Token selection against numpy references: truncation sets, and sampled frequencies."""

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.sampling.select import filter_logits, select_tokens


def _np_keep(logits, temperature, top_k, top_p):
    z = logits / temperature
    keep = np.ones_like(z, bool)
    if top_k:
        kth = np.sort(z)[::-1][top_k - 1]
        keep &= z >= kth
    if top_p < 1:  # nucleus of the distribution renormalised over the top-k survivors (as HF warpers chain)
        z = np.where(keep, z, -np.inf)
        order = np.argsort(-z, kind="stable")
        p = np.exp(z[order] - z.max())
        p /= p.sum()
        before = np.cumsum(p) - p
        kept = order[before < top_p]
        keep &= z >= z[kept].min()
    return keep


def test_filter_matches_numpy_on_random_rows():
    rng = np.random.default_rng(0)
    for _ in range(30):
        logits = rng.normal(size=(1, 50)).astype(np.float32) * rng.uniform(0.5, 4)
        t, k, p = rng.uniform(0.3, 2.0), int(rng.integers(0, 20)), float(rng.uniform(0.1, 1.0))
        got = np.asarray(filter_logits(jnp.asarray(logits), temperature=t, top_k=k, top_p=p))[0] > -1e29
        want = _np_keep(logits[0].astype(np.float64), t, k, p)
        np.testing.assert_array_equal(got, want)


def test_greedy_and_sampled_frequencies():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    tok, lp = select_tokens(logits, None, temperature=0.0)
    assert int(tok[0]) == 0 and abs(float(lp[0]) - np.log(0.5)) < 1e-6
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.vmap(lambda k: select_tokens(logits, k, temperature=1.0, top_p=0.8)[0][0])(keys)
    freq = np.bincount(np.asarray(draw), minlength=4) / 4000
    # nucleus {0, 1} (0.5 + 0.3 reaches 0.8), renormalised 0.625 / 0.375
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.03)
    _, lp_model = select_tokens(logits, keys[0], temperature=1.0, top_p=0.8, logprob_of="model")
    _, lp_samp = select_tokens(logits, keys[0], temperature=1.0, top_p=0.8, logprob_of="sampling")
    assert float(lp_samp[0]) > float(lp_model[0])
