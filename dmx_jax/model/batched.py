"""Model entry points for batches whose images are stored per example (what the data pipeline emits).

Training and RL batches keep every leaf batch-major so they split into micro-batches and shard over
(data, fsdp): pixel_values [B, P, C*T*p*p] and vision_inputs with a leading B. Each row's images are
encoded on their own (vmap) and row b's k-th image token takes row b's k-th merged feature.
The flat layout of transformers (pixel_values [P, C*T*p*p] for the whole batch) is also accepted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dmx_jax.model.qwen2_5_vl import merge_image_features, merge_image_features_rowwise


def embed_inputs(model, input_ids: jax.Array, pixel_values: jax.Array | None = None, vision_inputs: dict | None = None,
                 merge_ids: jax.Array | None = None) -> jax.Array:
    """Token embeddings with image features placed at image-token positions -> [B, T, D].

    merge_ids: ids that decide where image features go (default input_ids); a completion that samples the
    image-pad token is embedded as a plain token, as the sampler's decode step does.
    """
    x = model.text.embed_tokens(input_ids, model.dtype)
    if pixel_values is None:
        return x
    image_token_id = model.cfg.image_token_id
    where = input_ids if merge_ids is None else merge_ids
    if pixel_values.ndim == 3:
        from dmx_jax.sharding.rules import batch_axes_of_context_mesh
        spmd = batch_axes_of_context_mesh()     # rows sharded like the batch under a context mesh
        feats = jax.vmap(model.encode_images, spmd_axis_name=spmd)(pixel_values, vision_inputs)   # [B, N, D]
        return merge_image_features_rowwise(x, where, feats, image_token_id)
    return merge_image_features(x, where, model.encode_images(pixel_values, vision_inputs), image_token_id)


def forward_hidden(model, input_ids, positions, attention_mask, pixel_values=None, vision_inputs=None,
                   cache=None, key_mask=None, merge_ids=None):
    """Final hidden states [B, T, D] (and the updated cache). positions [3, B, T] or [B, 3, T]."""
    if positions.shape[0] != 3 and positions.shape[1] == 3:
        positions = jnp.swapaxes(positions, 0, 1)
    x = embed_inputs(model, input_ids, pixel_values, vision_inputs, merge_ids)
    key_mask = attention_mask if key_mask is None else key_mask
    c = model.cfg
    return model.text(x, positions, key_mask, cache, c.remat, c.attention, c.attention_block)


def forward_logits(model, input_ids, positions, attention_mask, pixel_values=None, vision_inputs=None,
                   cache=None, key_mask=None):
    h, cache = forward_hidden(model, input_ids, positions, attention_mask, pixel_values, vision_inputs, cache, key_mask)
    return model.logits(h), cache
