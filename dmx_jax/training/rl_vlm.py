"""The vision-language pieces GRPO needs: sampler-backed rollout and completion log-probs.

Both use the same model graph and the same positions (completion token j at slot T + j has position
last prompt position + 1 + j, as transformers generates), so the sampler's log-probs and the trainer's agree to fp32 round-off; the drift metric
measures exactly that.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmx_jax.model.batched import forward_hidden
from dmx_jax.sampling.generate import _generate, completion_positions
from dmx_jax.training.grpo_loss import GRPOConfig


def _positions_3bt(positions):
    return positions if positions.shape[0] == 3 else jnp.swapaxes(positions, 0, 1)


def make_sample_fn(graphdef, algo: GRPOConfig, *, stop_token_ids: tuple[int, ...], pad_id: int):
    """sample_fn(params, prompts, rng) for GRPOLearner; prompts carry input_ids, attention_mask,
    positions [N, 3, T], deltas [N, 1] and optionally pixel_values [N, P, F] + vision_inputs."""

    def sample_fn(params, prompts, rng):
        return _generate(graphdef, params, jnp.asarray(prompts["input_ids"]), _positions_3bt(jnp.asarray(prompts["positions"])),
                         jnp.asarray(prompts["attention_mask"]), jnp.asarray(prompts["deltas"]).reshape(-1, 1),
                         None if "pixel_values" not in prompts else jnp.asarray(prompts["pixel_values"]),
                         None if "vision_inputs" not in prompts else jax.tree.map(jnp.asarray, prompts["vision_inputs"]),
                         rng, max_new_tokens=algo.max_new_tokens, temperature=algo.temperature, top_k=algo.top_k,
                         top_p=algo.top_p, stop_token_ids=tuple(stop_token_ids), pad_id=pad_id)

    return sample_fn


def completion_logprobs(model, batch: dict) -> jax.Array:
    """Per-token log-probs [N, Tn] of batch['completion'] given the prompt (and its images)."""
    ids, comp = batch["input_ids"], batch["completion"]
    n, t = ids.shape
    tn = comp.shape[1]
    positions = completion_positions(_positions_3bt(batch["positions"]), batch["deltas"], tn, batch["attention_mask"])
    full = jnp.concatenate([ids, comp], axis=1)
    mask = jnp.concatenate([batch["attention_mask"], jnp.ones_like(comp)], axis=1)
    # image features go to the prompt's image tokens only (a sampled image-pad token is a plain token)
    merge_ids = jnp.concatenate([ids, jnp.full_like(comp, -1)], axis=1)
    hidden, _ = forward_hidden(model, full, positions, mask, batch.get("pixel_values"), batch.get("vision_inputs"),
                               merge_ids=merge_ids)
    logits = model.logits(hidden[:, t - 1:-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, comp[..., None], axis=-1)[..., 0]
