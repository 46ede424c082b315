"""Next-token selection: greedy, temperature, top-k, top-p, with the log-prob of the chosen token.

The policy GRPO trains is pi_T = softmax(logits / T), untruncated (as verl/EasyR1 recompute old and new
log-probs from logits / T). `logprob_of="model"` (the default) returns log pi_T of the chosen token, so the
sampler's log-probs and the trainer's recomputation are the same quantity at any temperature. Tokens are drawn
from pi_T truncated by top-k / top-p and renormalised; with truncation the rollout is slightly off-policy for
pi_T (tokens outside the nucleus are never drawn) and the importance ratio does not correct for it, exactly as
in verl/EasyR1. `logprob_of="sampling"` returns the log-prob under the truncated distribution actually used.
Greedy (temperature 0) returns log-probs at temperature 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dmx_jax.model.attention import NEG_INF


def filter_logits(logits: jax.Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Temperature-scaled logits [..., V] with everything outside top-k / the top-p nucleus set to -inf.

    top-p keeps the smallest set of highest-probability tokens whose mass reaches top_p (the token that
    crosses the threshold is kept); ties at the boundary are kept together.
    """
    logits = logits.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        # threshold = smallest kept logit
        threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return logits


def select_tokens(
    logits: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logprob_of: str = "model",
) -> tuple[jax.Array, jax.Array]:
    """logits [B, V] -> (tokens int32 [B], logprob float32 [B]). temperature 0 = greedy."""
    if temperature == 0.0:
        model_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, jnp.take_along_axis(model_logp, tokens[:, None], axis=-1)[:, 0]
    model_logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
    logp = model_logp if logprob_of == "model" else jax.nn.log_softmax(filtered, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
