"""The vision-language pieces GRPO needs: sampler-backed rollout and completion log-probs.

Both use the same model graph and the same positions (completion token j at slot T + j has position
last prompt position + 1 + j, as transformers generates), and both take log-probs of softmax(logits / T) at the
sampling temperature T, so the sampler's log-probs and the trainer's agree to fp32 round-off; the drift metric
measures exactly that. Completion log-probs are computed in chunks of positions under a rematerialised scan:
peak logits memory is [N, chunk, V] in the forward and the backward pass, never [N, Tn, V].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dmx_jax.sampling.generate import PROMPT_KEYS, Decoding, completion_positions, generate_arrays
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rollout import PolicyLogprob, Sampler


def make_sampler(
    graphdef,
    algo: GRPOConfig,
    *,
    stop_token_ids: tuple[int, ...],
    pad_id: int,
    shared_prefill: bool = True,
    cache_dtype=None,
    greedy: bool = False,
) -> Sampler:
    """The GRPOLearner's Sampler: sample(params, prompts, rng), where prompts (every leaf batch-major) carry
    input_ids, attention_mask, positions [N, 3, T], deltas [N, 1] and optionally pixel_values [N, P, F] +
    vision_inputs.

    shared_prefill: prompts arrive once per group (P rows) and the sampler returns P * G rows, the G samples
    sharing one prefill (Sampler.group_size = G); False: prompts arrive repeated G times.
    stop_token_ids: any number of ids (see dmx_jax.sampling.generate.stop_token_ids).
    cache_dtype: KV-cache dtype (None = the model's compute dtype). greedy: argmax tokens (checks; RL samples at
    algo.temperature, which GRPOConfig requires > 0)."""
    stops = tuple(int(s) for s in stop_token_ids)
    group = algo.group_size if shared_prefill else 1

    decoding = Decoding(
        algo.max_new_tokens,
        0.0 if greedy else algo.temperature,
        algo.top_k,
        algo.top_p,
        stops,
        pad_id,
        None if cache_dtype is None else jnp.dtype(cache_dtype),
        group,
        algo.rollout_micro_batches,
    )

    def sample_fn(params, prompts, rng):
        arrays = {k: prompts[k] for k in (*PROMPT_KEYS, "pixel_values", "vision_inputs") if k in prompts}
        return generate_arrays(graphdef, params, jax.tree.map(jnp.asarray, arrays), rng, decoding)

    return Sampler(sample_fn, group_size=group, stop_token_ids=stops)


def _chunked_token_logprobs(hidden, head, targets, temperature: float, chunk: int, with_entropy: bool):
    """hidden [N, T, D], head [D, V], targets [N, T] -> log softmax(h @ head / temperature)[target] [N, T]
    (and the entropy [N, T]), chunk positions at a time under jax.checkpoint."""
    n, t, d = hidden.shape

    def one(h, tg):
        logits = jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype), preferred_element_type=jnp.float32)
        logits = logits / temperature if temperature != 1.0 else logits
        lse = jax.nn.logsumexp(logits, axis=-1)
        lp = jnp.take_along_axis(logits, tg[..., None], axis=-1)[..., 0] - lse
        if not with_entropy:
            return lp, jnp.zeros_like(lp)
        p = jnp.exp(logits - lse[..., None])
        return lp, lse - jnp.sum(p * logits, axis=-1)

    if chunk <= 0 or chunk >= t:
        return one(hidden, targets)
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    h_c = hidden.reshape(n, n_chunks, chunk, d).swapaxes(0, 1)  # [n_chunks, N, chunk, D]
    t_c = targets.reshape(n, n_chunks, chunk).swapaxes(0, 1)
    lp, ent = jax.lax.map(lambda xs: jax.checkpoint(one)(*xs), (h_c, t_c))
    join = lambda x: x.swapaxes(0, 1).reshape(n, n_chunks * chunk)[:, :t]
    return join(lp), join(ent)


def completion_logprobs(
    model, batch: dict, *, temperature: float = 1.0, chunk_size: int = 0, return_entropy: bool = False
):
    """Per-token log-probs [N, Tn] of batch['completion'] given the prompt (and its images), under
    softmax(logits / temperature); with return_entropy also the per-token entropy [N, Tn] of that distribution.
    batch: the prompt arrays of make_sampler (positions [N, 3, T], batch-major) plus 'completion' [N, Tn].
    chunk_size > 0: logits are built chunk_size positions at a time (never [N, Tn, V] at once)."""
    ids, comp = batch["input_ids"], batch["completion"]
    n, t = ids.shape
    tn = comp.shape[1]
    prompt_positions = jnp.swapaxes(batch["positions"], 0, 1)  # rows [N, 3, T] -> [3, N, T]
    positions = completion_positions(prompt_positions, batch["deltas"], tn, batch["attention_mask"])
    full = jnp.concatenate([ids, comp], axis=1)
    mask = jnp.concatenate([batch["attention_mask"], jnp.ones_like(comp)], axis=1)
    # image features go to the prompt's image tokens only (a sampled image-pad token is a plain token)
    merge_ids = jnp.concatenate([ids, jnp.full_like(comp, -1)], axis=1)
    hidden, _ = model.hidden_states(
        full, positions, mask, batch.get("pixel_values"), batch.get("vision_inputs"), merge_ids=merge_ids
    )
    lp, ent = _chunked_token_logprobs(
        hidden[:, t - 1 : -1], model.head_kernel(), comp, float(temperature), int(chunk_size), return_entropy
    )
    return (lp, ent) if return_entropy else lp


def make_policy_logprob(algo: GRPOConfig, *, chunk_size: int = 0) -> PolicyLogprob:
    """The GRPOLearner's PolicyLogprob (completion_logprobs at the sampling temperature of `algo`, with entropy);
    chunk_size: positions per logits chunk (the runner passes MemoryConfig.loss_chunk)."""
    return PolicyLogprob(
        functools.partial(completion_logprobs, temperature=algo.temperature, chunk_size=chunk_size), with_entropy=True
    )
