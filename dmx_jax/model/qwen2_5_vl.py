"""The joint Qwen2.5-VL model: vision encoder, image features scattered into image-token slots, decoder, head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.model.config import ModelConfig
from dmx_jax.model.layers import ParamTree
from dmx_jax.model.positions import rope_index
from dmx_jax.model.text import TextDecoder, init_cache
from dmx_jax.model.vision import VisionEncoder, vision_inputs
from dmx_jax.sharding.rules import batch_axes_of_context_mesh


def merge_image_features(
    embeds: jax.Array, input_ids: jax.Array, features: jax.Array, image_token_id: int
) -> jax.Array:
    """Place features[k] at the k-th image token of the (flattened) batch. embeds [B,T,D], features [N,D]."""
    is_img = (input_ids == image_token_id).reshape(-1)
    idx = jnp.clip(jnp.cumsum(is_img) - 1, 0, max(features.shape[0] - 1, 0))
    flat = jnp.where(is_img[:, None], features[idx].astype(embeds.dtype), embeds.reshape(-1, embeds.shape[-1]))
    return flat.reshape(embeds.shape)


def merge_image_features_rowwise(embeds, input_ids, features, image_token_id):
    """Row b's k-th image token takes features[b, k]. features [B, N, D] (per-example images)."""
    is_img = input_ids == image_token_id
    idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, features.shape[1] - 1)
    gathered = jnp.take_along_axis(features, idx[..., None], axis=1)
    return jnp.where(is_img[..., None], gathered.astype(embeds.dtype), embeds)


class Qwen25VL(nnx.Module):
    """Qwen2.5-VL: `vision` (window/full attention ViT + merger), `text` (M-RoPE Qwen2 decoder), `lm_head`.

    The one forward path, jit-friendly pieces: encode_images -> embed -> hidden_states -> logits (forward
    chains them; training, RL, sampling and the transformers-style __call__ all run it). The KV cache
    ({"k", "v": [L, B, S, K, H], "index"}) is written at slots [index, index + T); with a cache, `key_mask`
    (default: `attention_mask`) is [B, S] over cache slots, else [B, T].
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.vision = VisionEncoder(cfg.vision, rngs, pdt)
        self.text = TextDecoder(cfg.text, rngs, pdt)
        if not cfg.tie_word_embeddings:
            kernel = jax.random.normal(rngs.params(), (cfg.text.hidden_size, cfg.text.vocab_size)) * 0.02
            self.lm_head = ParamTree({"kernel": kernel.astype(pdt)})
        if cfg.text.lora.rank:  # last, so the base weights are those of the same seed without adapters
            self.text.add_adapters(rngs.params())

    @property
    def dtype(self):
        return jnp.dtype(self.cfg.dtype)

    def head_kernel(self) -> jax.Array:
        if self.cfg.tie_word_embeddings:
            return self.text.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def encode_images(self, pixel_values: jax.Array, vin: dict) -> jax.Array:
        """pixel_values [P, C*T*p*p] (processor order), vin = vision_inputs(...) -> merged features [P/m^2, D]
        in processor order, padded units last. Attention within window / image segments (cfg.attention)."""
        c = self.cfg
        return self.vision(pixel_values, vin, self.dtype, c.vision_remat, c.attention, c.attention_block)

    def embed(self, input_ids, pixel_values=None, vision_inputs=None, merge_ids=None) -> jax.Array:
        """input_ids [B, T] -> [B, T, D], image features at image-token slots. Two image layouts:
        per row (the data pipeline's): pixel_values [B, P, C*T*p*p], vision_inputs with a leading B, row b's
        k-th image token takes row b's k-th merged feature (rows encoded under vmap, sharded like the batch
        under a context mesh); flat (transformers'): pixel_values [P, C*T*p*p] for the whole batch, the k-th
        image token of the row-major batch takes feature k. merge_ids (default input_ids) decide where
        features go: a completion that samples the image-pad token is embedded as a plain token."""
        x = self.text.embed_tokens(input_ids, self.dtype)
        if pixel_values is None:
            return x
        where = input_ids if merge_ids is None else merge_ids
        if pixel_values.ndim == 3:
            feats = jax.vmap(self.encode_images, spmd_axis_name=batch_axes_of_context_mesh())(
                pixel_values, vision_inputs
            )  # [B, N, D]
            return merge_image_features_rowwise(x, where, feats, self.cfg.image_token_id)
        return merge_image_features(x, where, self.encode_images(pixel_values, vision_inputs), self.cfg.image_token_id)

    def hidden_states(
        self,
        input_ids,
        positions,
        attention_mask,
        pixel_values=None,
        vision_inputs=None,
        cache=None,
        key_mask=None,
        merge_ids=None,
        dropout_key=None,
    ):
        """input_ids [B, T], positions [3, B, T] (axis-major; the pipeline's batch-major rows [B, 3, T] are
        swapped by the caller: the shape is checked, no layout is guessed) -> (final-norm hidden [B, T, D],
        new cache or None). dropout_key: the decoder adapters' dropout (training); None: deterministic."""
        if tuple(positions.shape) != (3, *input_ids.shape):
            raise ValueError(
                f"positions must be [3, B, T] for input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(positions.shape)} (batch-major rows [B, 3, T]: swap axes 0 and 1)"
            )
        x = self.embed(input_ids, pixel_values, vision_inputs, merge_ids)
        key_mask = attention_mask if key_mask is None else key_mask
        c = self.cfg
        return self.text(x, positions, key_mask, cache, c.remat, c.attention, c.attention_block, dropout_key)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, T, D] -> logits [B, T, V] in fp32 (accumulated in fp32 whatever the compute dtype)."""
        return jnp.einsum(
            "btd,dv->btv", hidden, self.head_kernel().astype(hidden.dtype), preferred_element_type=jnp.float32
        )

    def forward(
        self,
        input_ids,
        positions,
        attention_mask,
        pixel_values=None,
        vision_inputs=None,
        cache=None,
        key_mask=None,
        dropout_key=None,
    ):
        """-> (logits [B, T, V] fp32, new cache or None)."""
        h, cache = self.hidden_states(
            input_ids, positions, attention_mask, pixel_values, vision_inputs, cache, key_mask, dropout_key=dropout_key
        )
        return self.logits(h), cache

    def __call__(
        self,
        input_ids,
        *,
        pixel_values=None,
        image_grid_thw=None,
        attention_mask=None,
        position_ids=None,
        pixel_values_videos=None,
        video_grid_thw=None,
    ):
        """Same inputs as transformers' Qwen2_5_VLForConditionalGeneration (images only) -> logits [B,T,V]."""
        if pixel_values_videos is not None or video_grid_thw is not None:
            raise NotImplementedError("dmx-jax handles images only; video inputs are not supported")
        if (pixel_values is None) != (image_grid_thw is None):
            raise ValueError("pixel_values and image_grid_thw must be given together")
        ids = np.asarray(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        vin = None
        if image_grid_thw is not None:
            vin = vision_inputs(np.asarray(image_grid_thw), self.cfg.vision)
            n_tokens = int((ids == self.cfg.image_token_id).sum())
            n_feats = int(np.prod(np.asarray(image_grid_thw), axis=-1).sum()) // self.cfg.vision.spatial_merge_size**2
            if n_tokens != n_feats:
                raise ValueError(f"input_ids hold {n_tokens} image tokens but the images give {n_feats} features")
        if position_ids is None:
            position_ids, _ = rope_index(
                ids,
                image_grid_thw,
                mask,
                spatial_merge_size=self.cfg.vision.spatial_merge_size,
                image_token_id=self.cfg.image_token_id,
            )
        logits, _ = self.forward(
            jnp.asarray(ids),
            jnp.asarray(position_ids),
            jnp.asarray(mask),
            None if pixel_values is None else jnp.asarray(pixel_values),
            None if vin is None else jax.tree.map(jnp.asarray, vin),
        )
        return logits


def init_model_cache(model: Qwen25VL, batch: int, max_len: int, dtype=None) -> dict:
    return init_cache(model.cfg.text, batch, max_len, dtype or model.dtype)
