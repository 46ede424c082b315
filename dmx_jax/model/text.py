"""Qwen2 text decoder with M-RoPE (mrope_section over t/h/w position ids) and an optional KV cache.

KV cache: {"k", "v": [L, B, S, K, H], "index": int32 scalar (next slot to write)}. A call with T tokens
writes slots [index, index+T) and attends causally over slots <= its own, restricted by `key_mask`
[B, S] (1 = real key). Prefill and single-token decode are the same code path with static shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dmx_jax.model import lora, rotary
from dmx_jax.model.attention import attention, causal_mask
from dmx_jax.model.config import TextConfig
from dmx_jax.model.layers import ParamTree, activation, apply_rotary, remat_policy, rms_norm, swiglu, values
from dmx_jax.sharding.rules import constrain

RESIDUAL = ("act_batch", "act_length", "act_embed")


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, T] -> cos, sin [B, T, hd] with mrope_section picking t/h/w per frequency band."""
    return rotary.mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)


def init_cache(cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> dict:
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "index": jnp.zeros((), jnp.int32)}


def _project(h, p: dict, eq: str, lora_scale: float, n_in: int = 1, key: jax.Array | None = None, rate: float = 0.0):
    """One projection of a layer: h @ kernel (+ bias) (+ the LoRA term when p holds adapters, its input dropped
    out at `rate` when given this projection's key)."""
    y = jnp.einsum(eq, h, p["kernel"].astype(h.dtype))
    if "bias" in p:
        y = y + p["bias"].astype(h.dtype)
    d = lora.delta(h, p, n_in, lora_scale, key, rate)
    return y if d is None else y + d


def _adapter_dropout(key: jax.Array | None, name: str, cfg: TextConfig) -> dict:
    """The adapter dropout arguments of one projection from the layer's key (None: none)."""
    return {"key": lora.projection_key(key, name), "rate": cfg.lora.dropout}


def _qkv(x, p, cos, sin, cfg: TextConfig, key: jax.Array | None = None):
    """Pre-attention half of a layer: (q [B,T,N,H], k, v [B,T,K,H]) with M-RoPE applied to q and k. key: the
    layer's adapter dropout key."""
    a, s = p["attn"], cfg.lora.scale
    h = rms_norm(x, p["input_norm"]["scale"], cfg.rms_norm_eps)
    q = _project(h, a["q"], "btd,dnh->btnh", s, **_adapter_dropout(key, "q", cfg))
    k = _project(h, a["k"], "btd,dkh->btkh", s, **_adapter_dropout(key, "k", cfg))
    v = _project(h, a["v"], "btd,dkh->btkh", s, **_adapter_dropout(key, "v", cfg))
    q, k = apply_rotary(q, cos[:, :, None], sin[:, :, None]), apply_rotary(k, cos[:, :, None], sin[:, :, None])
    q = constrain(q, ("act_batch", "act_length", "act_heads", None))
    k, v = (constrain(a, ("act_batch", "act_length", "act_kv_heads", None)) for a in (k, v))
    return q, k, v


def _attend_mlp(x, p, q, k, v, mask, cfg: TextConfig, impl: str, block: int, key: jax.Array | None = None):
    """Post-attention half: attention of q over keys/values k, v [B,S,K,H], output projection, residual, MLP.
    key: the layer's adapter dropout key."""
    o = attention(q, k, v, mask, impl, block)
    o = _project(o, p["attn"]["o"], "btnh,nhd->btd", cfg.lora.scale, n_in=2, **_adapter_dropout(key, "o", cfg))
    x = constrain(x + o, RESIDUAL)
    x = x + swiglu(
        rms_norm(x, p["post_attn_norm"]["scale"], cfg.rms_norm_eps),
        p["mlp"],
        activation(cfg.hidden_act),
        ("act_batch", "act_length", "act_mlp"),
        cfg.lora.scale,
        key,
        cfg.lora.dropout,
    )
    return constrain(x, RESIDUAL)


class TextDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.cfg = cfg
        d, f, n, k, hd, L = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.num_hidden_layers,
        )
        init = lambda *shape, scale=0.02: (jax.random.normal(rngs.params(), shape) * scale).astype(param_dtype)
        zeros = lambda *shape: jnp.zeros(shape, param_dtype)
        self.embed = ParamTree({"embedding": init(cfg.vocab_size, d)})
        layers = {
            "input_norm": {"scale": jnp.ones((L, d), param_dtype)},
            "post_attn_norm": {"scale": jnp.ones((L, d), param_dtype)},
            "attn": {
                "q": {"kernel": init(L, d, n, hd), "bias": zeros(L, n, hd)},
                "k": {"kernel": init(L, d, k, hd), "bias": zeros(L, k, hd)},
                "v": {"kernel": init(L, d, k, hd), "bias": zeros(L, k, hd)},
                "o": {"kernel": init(L, n, hd, d)},
            },
            "mlp": {
                "gate": {"kernel": init(L, d, f)},
                "up": {"kernel": init(L, d, f)},
                "down": {"kernel": init(L, f, d)},
            },
        }
        self.layers = ParamTree(layers)
        self.norm = ParamTree({"scale": jnp.ones((d,), param_dtype)})

    def add_adapters(self, key: jax.Array) -> None:
        """LoRA adapters (cfg.lora) beside the target kernels, fp32 whatever the base's dtype; B = 0."""
        kernels = {t: getattr(getattr(self.layers, lora.GROUP[t]), t).kernel[...] for t in self.cfg.lora.targets}
        for (group, name, leaf), value in lora.init_adapters(kernels, self.cfg.lora, key).items():
            setattr(getattr(getattr(self.layers, group), name), leaf, nnx.Param(value))

    def embed_tokens(self, input_ids: jax.Array, dtype=jnp.float32) -> jax.Array:
        return self.embed.embedding[...][input_ids].astype(dtype)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        cache: dict | None = None,
        remat: str = "none",
        attention: str = "xla",
        attention_block: int = 512,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, dict | None]:
        """x [B,T,D], positions [3,B,T], key_mask [B,S] (S = T without cache) -> (hidden [B,T,D], cache).

        attention: "xla" | "chunked" | "cudnn" | "splash" (dmx_jax.model.attention); masks stay structural.
        dropout_key: drop out the adapters' inputs at cfg.lora.dropout (training); None: deterministic."""
        cfg = self.cfg
        b, t, _ = x.shape
        cos, sin = mrope_cos_sin(positions, cfg)
        index = jnp.zeros((), jnp.int32) if cache is None else cache["index"]
        mask = causal_mask(key_mask, index, t)  # queries at slots index.., keys [B, S]
        layers = jax.tree.map(lambda a: a.astype(x.dtype), values(self.layers))
        layer_ids = jnp.arange(cfg.num_hidden_layers, dtype=jnp.int32)
        drop = dropout_key if cfg.lora.rank and cfg.lora.dropout > 0 else None

        def layer_key(layer):
            return None if drop is None else jax.random.fold_in(drop, layer)

        def body(h, xs):
            p, layer = xs
            h, key = constrain(h, RESIDUAL), layer_key(layer)
            q, k, v = _qkv(h, p, cos, sin, cfg, key)
            return _attend_mlp(h, p, q, k, v, mask, cfg, attention, attention_block, key), None

        def cached_body(carry, xs):
            # the cache rides in the carry and each layer writes only its T new slots in place (a scan output
            # would rewrite the whole [B, S, K, H] slice of every layer at every decode step)
            h, k_all, v_all = carry
            p, layer = xs
            h, key = constrain(h, RESIDUAL), layer_key(layer)
            q, k, v = _qkv(h, p, cos, sin, cfg, key)
            k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), (layer, 0, index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), (layer, 0, index, 0, 0))
            k_att, v_att = (
                jax.lax.dynamic_index_in_dim(a, layer, 0, keepdims=False).astype(h.dtype) for a in (k_all, v_all)
            )
            return (_attend_mlp(h, p, q, k_att, v_att, mask, cfg, attention, attention_block, key), k_all, v_all), None

        policy = remat_policy(remat)
        if cache is None:
            if policy is not None:
                body = jax.checkpoint(body, policy=policy)
            x, _ = jax.lax.scan(body, x, (layers, layer_ids))
            new_cache = None
        else:
            if policy is not None:
                cached_body = jax.checkpoint(cached_body, policy=policy)
            (x, k_all, v_all), _ = jax.lax.scan(cached_body, (x, cache["k"], cache["v"]), (layers, layer_ids))
            new_cache = {"k": k_all, "v": v_all, "index": index + t}
        return rms_norm(x, self.norm.scale[...].astype(x.dtype), cfg.rms_norm_eps), new_cache
