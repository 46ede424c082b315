"""The one name-mapping table between Hugging Face Qwen2.5-VL tensors and dmx-jax parameters.

Each row: (param path, HF name template with {i} for stacked layers or None for a single tensor,
to_jax(hf_array, cfg) -> param slice, to_hf(param_slice, cfg) -> hf_array). PyTorch Linear weights are
[out, in]; dmx-jax kernels are [in, out] with head axes split out.
"""

from __future__ import annotations

from dmx_jax.hf import slicing

T = lambda w, c: w.T
ID = lambda w, c: w


def _heads(n_attr, kv=False):
    def to_jax(w, c):  # [n*h, d] -> [d, n, h]
        n = c.text.num_key_value_heads if kv else c.text.num_attention_heads
        return w.T.reshape(w.shape[1], n, -1)

    def to_hf(k, c):
        return k.reshape(k.shape[0], -1).T

    return to_jax, to_hf


def _bias_heads(kv=False):
    def to_jax(b, c):
        n = c.text.num_key_value_heads if kv else c.text.num_attention_heads
        return b.reshape(n, -1)

    return to_jax, lambda b, c: b.reshape(-1)


_q, _kv = _heads(0), _heads(0, kv=True)
_qb, _kvb = _bias_heads(), _bias_heads(kv=True)
_o = (
    lambda w, c: w.T.reshape(c.text.num_attention_heads, c.text.head_dim, -1),
    lambda k, c: k.reshape(-1, k.shape[-1]).T,
)
_qkv = (
    lambda w, c: w.T.reshape(w.shape[1], 3, c.vision.num_heads, c.vision.head_dim),
    lambda k, c: k.reshape(k.shape[0], -1).T,
)
_qkvb = (lambda b, c: b.reshape(3, c.vision.num_heads, c.vision.head_dim), lambda b, c: b.reshape(-1))
_proj = (lambda w, c: w.T.reshape(c.vision.num_heads, c.vision.head_dim, -1), lambda k, c: k.reshape(-1, k.shape[-1]).T)
_patch = (
    lambda w, c: w.reshape(w.shape[0], -1).T,
    lambda k, c: k.T.reshape(
        k.shape[1], c.vision.in_channels, c.vision.temporal_patch_size, c.vision.patch_size, c.vision.patch_size
    ),
)

TL = "model.layers.{i}."
VB = "visual.blocks.{i}."
TABLE = (
    ("text.embed.embedding", "model.embed_tokens.weight", ID, ID),
    ("text.norm.scale", "model.norm.weight", ID, ID),
    ("lm_head.kernel", "lm_head.weight", T, T),
    ("text.layers.input_norm.scale", TL + "input_layernorm.weight", ID, ID),
    ("text.layers.post_attn_norm.scale", TL + "post_attention_layernorm.weight", ID, ID),
    ("text.layers.attn.q.kernel", TL + "self_attn.q_proj.weight", *_q),
    ("text.layers.attn.q.bias", TL + "self_attn.q_proj.bias", *_qb),
    ("text.layers.attn.k.kernel", TL + "self_attn.k_proj.weight", *_kv),
    ("text.layers.attn.k.bias", TL + "self_attn.k_proj.bias", *_kvb),
    ("text.layers.attn.v.kernel", TL + "self_attn.v_proj.weight", *_kv),
    ("text.layers.attn.v.bias", TL + "self_attn.v_proj.bias", *_kvb),
    ("text.layers.attn.o.kernel", TL + "self_attn.o_proj.weight", *_o),
    ("text.layers.mlp.gate.kernel", TL + "mlp.gate_proj.weight", T, T),
    ("text.layers.mlp.up.kernel", TL + "mlp.up_proj.weight", T, T),
    ("text.layers.mlp.down.kernel", TL + "mlp.down_proj.weight", T, T),
    ("vision.patch_embed.kernel", "visual.patch_embed.proj.weight", *_patch),
    ("vision.blocks.norm1.scale", VB + "norm1.weight", ID, ID),
    ("vision.blocks.norm2.scale", VB + "norm2.weight", ID, ID),
    ("vision.blocks.attn.qkv.kernel", VB + "attn.qkv.weight", *_qkv),
    ("vision.blocks.attn.qkv.bias", VB + "attn.qkv.bias", *_qkvb),
    ("vision.blocks.attn.proj.kernel", VB + "attn.proj.weight", *_proj),
    ("vision.blocks.attn.proj.bias", VB + "attn.proj.bias", ID, ID),
    ("vision.blocks.mlp.gate.kernel", VB + "mlp.gate_proj.weight", T, T),
    ("vision.blocks.mlp.gate.bias", VB + "mlp.gate_proj.bias", ID, ID),
    ("vision.blocks.mlp.up.kernel", VB + "mlp.up_proj.weight", T, T),
    ("vision.blocks.mlp.up.bias", VB + "mlp.up_proj.bias", ID, ID),
    ("vision.blocks.mlp.down.kernel", VB + "mlp.down_proj.weight", T, T),
    ("vision.blocks.mlp.down.bias", VB + "mlp.down_proj.bias", ID, ID),
    ("vision.merger.ln_q.scale", "visual.merger.ln_q.weight", ID, ID),
    ("vision.merger.fc1.kernel", "visual.merger.mlp.0.weight", T, T),
    ("vision.merger.fc1.bias", "visual.merger.mlp.0.bias", ID, ID),
    ("vision.merger.fc2.kernel", "visual.merger.mlp.2.weight", T, T),
    ("vision.merger.fc2.bias", "visual.merger.mlp.2.bias", ID, ID),
)

# transformers keeps in-memory names under model.language_model / model.visual; accept them on load.
ALIASES = (("model.language_model.", "model."), ("model.visual.", "visual."))


# Slice layouts (dmx_jax.hf.slicing) of the transforms above, so a shard is read from the file without the full
# tensor: layout(hf_shape, cfg) -> ((hf_axes, target_sizes), ...) in target order. Rows not listed are identity.
def _split_rows(n_of):  # [n*h, d] -> [d, n, h]
    return lambda s, c: (((1,), (s[1],)), ((0,), (n_of(c), s[0] // n_of(c))))


def _split_cols(n_of):  # [d, n*h] -> [n, h, d]
    return lambda s, c: (((1,), (n_of(c), s[1] // n_of(c))), ((0,), (s[0],)))


def _split_vec(n_of):  # [n*h] -> [n, h]
    return lambda s, c: (((0,), (n_of(c), s[0] // n_of(c))),)


_HEADS, _KV = (lambda c: c.text.num_attention_heads), (lambda c: c.text.num_key_value_heads)
_VHEADS = lambda c: c.vision.num_heads
_transposed = lambda s, c: slicing.transpose2(s)
LAYOUTS = {
    "lm_head.kernel": _transposed,
    "text.layers.attn.q.kernel": _split_rows(_HEADS),
    "text.layers.attn.q.bias": _split_vec(_HEADS),
    "text.layers.attn.k.kernel": _split_rows(_KV),
    "text.layers.attn.k.bias": _split_vec(_KV),
    "text.layers.attn.v.kernel": _split_rows(_KV),
    "text.layers.attn.v.bias": _split_vec(_KV),
    "text.layers.attn.o.kernel": _split_cols(_HEADS),
    **{f"text.layers.mlp.{n}.kernel": _transposed for n in ("gate", "up", "down")},
    "vision.patch_embed.kernel": lambda s, c: (((1, 2, 3, 4), (s[1] * s[2] * s[3] * s[4],)), ((0,), (s[0],))),
    "vision.blocks.attn.qkv.kernel": lambda s, c: (((1,), (s[1],)), ((0,), (3, _VHEADS(c), s[0] // (3 * _VHEADS(c))))),
    "vision.blocks.attn.qkv.bias": lambda s, c: (((0,), (3, _VHEADS(c), s[0] // (3 * _VHEADS(c)))),),
    "vision.blocks.attn.proj.kernel": _split_cols(_VHEADS),
    **{f"vision.blocks.mlp.{n}.kernel": _transposed for n in ("gate", "up", "down")},
    "vision.merger.fc1.kernel": _transposed,
    "vision.merger.fc2.kernel": _transposed,
}


def layout(param_path: str, hf_shape, cfg) -> slicing.Layout:
    """How the HF tensor's axes become the parameter's (see dmx_jax.hf.slicing); must agree with to_jax."""
    fn = LAYOUTS.get(param_path)
    return fn(tuple(hf_shape), cfg) if fn else slicing.identity(hf_shape)


def num_layers(path: str, cfg) -> int | None:
    if path.startswith("text.layers."):
        return cfg.text.num_hidden_layers
    if path.startswith("vision.blocks."):
        return cfg.vision.depth
    return None


def rows(cfg):
    """Table rows that apply to this config (lm_head absent when embeddings are tied)."""
    return [r for r in TABLE if not (r[0] == "lm_head.kernel" and cfg.tie_word_embeddings)]


def hf_names(path_template: str, cfg, path: str) -> list[str]:
    n = num_layers(path, cfg)
    return [path_template.format(i=i) for i in range(n)] if n is not None else [path_template]


def canonical(name: str) -> str:
    for old, new in ALIASES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name
