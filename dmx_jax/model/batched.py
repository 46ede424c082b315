"""Model entry points for batches whose images are stored per example (what the data pipeline emits).

Training and RL batches keep every leaf batch-major so they split into micro-batches and shard over
(data, fsdp): pixel_values [B, P, C*T*p*p] and vision_inputs with a leading B. Each row's images are
encoded on their own (vmap) and row b's k-th image token takes row b's k-th merged feature.
The flat layout of transformers (pixel_values [P, C*T*p*p] for the whole batch) is also accepted.
M-RoPE positions are axis-major [3, B, T] here, as inside the model; a pipeline batch holds batch-major rows
[B, 3, T], and whoever passes them on swaps axes 0 and 1 (a batch of 3 rows has the same shape either way).
"""
from __future__ import annotations

import jax

from dmx_jax.model.qwen2_5_vl import merge_image_features, merge_image_features_rowwise


def _check_positions(positions: jax.Array, ids_shape: tuple[int, int]) -> None:
    """positions must be axis-major [3, B, T] for input_ids [B, T] (a shape check only: no layout is guessed)."""
    if tuple(positions.shape) != (3, *ids_shape):
        raise ValueError(f"positions must be [3, B, T] for input_ids {tuple(ids_shape)}, got {tuple(positions.shape)}"
                         " (batch-major rows [B, 3, T]: swap axes 0 and 1)")


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
    """input_ids [B, T], positions [3, B, T] (axis-major; the pipeline's batch-major rows [B, 3, T] are swapped by
    the caller) -> final hidden states [B, T, D] (and the updated cache)."""
    _check_positions(positions, input_ids.shape)
    x = embed_inputs(model, input_ids, pixel_values, vision_inputs, merge_ids)
    key_mask = attention_mask if key_mask is None else key_mask
    c = model.cfg
    return model.text(x, positions, key_mask, cache, c.remat, c.attention, c.attention_block)


def forward_logits(model, input_ids, positions, attention_mask, pixel_values=None, vision_inputs=None,
                   cache=None, key_mask=None):
    """forward_hidden's inputs (positions [3, B, T]) -> (logits [B, T, V], cache)."""
    h, cache = forward_hidden(model, input_ids, positions, attention_mask, pixel_values, vision_inputs, cache, key_mask)
    return model.logits(h), cache
