"""Masked next-token cross-entropy that can avoid materialising [B, T, V] fp32 logits.

Conventions: `targets[b, t]` is the token predicted from position t (callers shift input_ids), and
`weights[b, t]` is 1 where that prediction is trained (answer tokens) and 0 elsewhere. Losses are
returned as (sum of token losses, number of weighted tokens) so micro-batches and data shards combine
exactly: mean = total_sum / total_count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dmx_jax.sharding.rules import constrain

LOGITS = ("act_batch", "act_length", "act_vocab")


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target], computed in fp32. logits [..., V], targets [...] -> [...]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return lse - target_logit


def cross_entropy_from_hidden(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, weights: jax.Array, *, chunk_size: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Sum and count of weighted token losses from final hidden states.

    hidden [B, T, D], head [D, V], targets/weights [B, T]. With chunk_size > 0 the sequence is processed in
    chunks of that many positions under a rematerialised scan: peak logits memory is [B, chunk, V] in the
    forward and the backward pass, instead of [B, T, V].
    """
    weights = weights.astype(jnp.float32)
    if chunk_size <= 0 or chunk_size >= hidden.shape[1]:
        logits = constrain(jnp.einsum("btd,dv->btv", hidden, head.astype(hidden.dtype)), LOGITS)
        losses = token_losses(logits, targets)
        return jnp.sum(losses * weights), jnp.sum(weights)
    b, t, d = hidden.shape
    n_chunks = -(-t // chunk_size)
    pad = n_chunks * chunk_size - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    # [n_chunks, B, chunk, ...]
    h_c = hidden.reshape(b, n_chunks, chunk_size, d).swapaxes(0, 1)
    t_c = targets.reshape(b, n_chunks, chunk_size).swapaxes(0, 1)
    w_c = weights.reshape(b, n_chunks, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_loss(h, tg, w):
        logits = constrain(jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype)), LOGITS)
        return jnp.sum(token_losses(logits, tg) * w)

    def body(total, xs):
        return total + chunk_loss(*xs), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h_c, t_c, w_c))
    return total, jnp.sum(weights)


def shift_targets(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(targets, weights) for next-token prediction: position t predicts input_ids[t+1].

    loss_mask[b, t] marks input token t as a training target, so weights[t] = loss_mask[t+1]; the last
    position predicts nothing.
    """
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    weights = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    return targets, weights
