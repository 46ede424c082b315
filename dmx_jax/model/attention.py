"""Grouped-query attention with interchangeable implementations (ModelConfig.attention).

Masks are described, not materialised: `Mask(q_pos, k_pos, k_valid, q_seg, k_seg, causal)` allows query t to
see key s when (not causal or k_pos[s] <= q_pos[t]) and k_valid[s] and q_seg[t] == k_seg[s]. Each
implementation builds only what it needs:
- "xla": dense softmax over [B, T, S] in fp32 (the reference; what transformers' eager attention does);
- "chunked": blockwise online softmax over key blocks of `block` positions under a rematerialised scan:
  memory O(T x block) in forward and backward, any backend, exact to fp32 round-off against "xla";
- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` (GPU);
- "splash": Pallas splash attention (TPU; causal text without a KV cache, padding as segment ids), placed per
  shard with shard_map over the context mesh. Other calls (cache prefill/decode) fall back to "chunked".
Vision rows: `local_segment_attention` (windows of bounded length) and `segment_attention` (images: blocks no
image spans are skipped) compute only within their segments, exactly.
A fully masked query row (a left-padding position) gets the uniform average of its keys in "xla" and
"chunked" alike, as transformers does; its output is never used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

NEG_INF = -1e30
IMPLEMENTATIONS = ("xla", "chunked", "cudnn", "splash")


class Mask(NamedTuple):
    """Attention mask by structure. Leading B may be 1 (broadcast). None = no constraint of that kind."""

    q_pos: jax.Array | None = None  # [B, T] int (slot of each query; causal only)
    k_pos: jax.Array | None = None  # [B, S] int (slot of each key; causal only)
    k_valid: jax.Array | None = None  # [B, S] bool/int (1 = real key)
    q_seg: jax.Array | None = None  # [B, T] int segment ids
    k_seg: jax.Array | None = None  # [B, S]
    causal: bool = False


def causal_mask(key_mask: jax.Array, index, t: int) -> Mask:
    """Causal text mask: queries at slots index..index+t-1 over S = key_mask.shape[1] slots (KV cache or not)."""
    s = key_mask.shape[1]
    q_pos = (index + jnp.arange(t, dtype=jnp.int32))[None]
    return Mask(q_pos=q_pos, k_pos=jnp.arange(s, dtype=jnp.int32)[None], k_valid=key_mask > 0, causal=True)


def segment_mask(seg: jax.Array) -> Mask:
    """Bidirectional attention within segments (vision windows / images). seg [B, P] or [P]."""
    seg = seg if seg.ndim == 2 else seg[None]
    return Mask(q_seg=seg, k_seg=seg)


def _allowed(mask: Mask, q_lo=None, k_lo=None, tq=None, tk=None) -> jax.Array | None:
    """Boolean [B|1, T, S'] for the (sub)block; None when nothing is masked."""

    def sl(x, lo, n):
        return x if lo is None else jax.lax.dynamic_slice_in_dim(x, lo, n, axis=1)

    out = None

    def conj(a, b):
        return b if a is None else a & b

    if mask.causal:
        out = conj(out, sl(mask.k_pos, k_lo, tk)[:, None, :] <= sl(mask.q_pos, q_lo, tq)[:, :, None])
    if mask.k_valid is not None:
        out = conj(out, (sl(mask.k_valid, k_lo, tk) > 0)[:, None, :])
    if mask.q_seg is not None:
        out = conj(out, sl(mask.q_seg, q_lo, tq)[:, :, None] == sl(mask.k_seg, k_lo, tk)[:, None, :])
    return out


def dense_attention(q, k, v, mask: Mask) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H]; fp32 scores and softmax."""
    b, t, n, h = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, t, kh, n // kh, h)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * (h**-0.5)
    allowed = _allowed(mask)
    if allowed is not None:
        scores = jnp.where(allowed[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def _pad_keys(x, n, axis=1, value=0):
    if x is None or n == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, n)
    return jnp.pad(x, widths, constant_values=value)


def chunked_attention(q, k, v, mask: Mask, block: int = 512) -> jax.Array:
    """Online-softmax attention over key blocks of `block` positions (flash-attention recurrence, pure JAX).

    Live memory per step: scores [B, K, G, T, block] fp32 plus the running (max, sum, output) accumulators;
    the block body is rematerialised, so the backward pass keeps only the accumulators per block.
    """
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    block = max(1, min(block, s))
    nb = -(-s // block)
    pad = nb * block - s
    k, v = _pad_keys(k, pad), _pad_keys(v, pad)
    in_range = _pad_keys(jnp.ones((1, s), bool), pad, value=False)
    mask = mask._replace(
        k_pos=_pad_keys(mask.k_pos, pad),
        k_valid=_pad_keys(mask.k_valid, pad),
        k_seg=_pad_keys(mask.k_seg, pad, value=-1),
    )
    qg = q.reshape(b, t, kh, g, h) * jnp.asarray(h**-0.5, q.dtype)

    @jax.checkpoint
    def step(carry, j):
        m_prev, l_prev, acc = carry  # [B,K,G,T], [B,K,G,T], [B,T,K,G,H] f32
        lo = j * block
        kb = jax.lax.dynamic_slice_in_dim(k, lo, block, axis=1)
        vb = jax.lax.dynamic_slice_in_dim(v, lo, block, axis=1)
        sc = jnp.einsum("btkgh,bskh->bkgts", qg, kb, preferred_element_type=jnp.float32)
        allowed = _allowed(mask, k_lo=lo, tk=block)
        if allowed is not None:
            sc = jnp.where(allowed[:, None, None], sc, NEG_INF)
        real = jax.lax.dynamic_slice_in_dim(in_range, lo, block, axis=1)  # padding past S counts for nothing
        sc = jnp.where(real[:, None, None, None], sc, -jnp.inf)
        m_new = jnp.maximum(m_prev, sc.max(-1))
        p = jnp.exp(sc - m_new[..., None])
        corr = jnp.exp(m_prev - m_new)
        l_new = l_prev * corr + p.sum(-1)
        pv = jnp.einsum("bkgts,bskh->btkgh", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
        acc = acc * jnp.moveaxis(corr, 3, 1)[..., None] + pv
        return (m_new, l_new, acc), None

    init = (
        jnp.full((b, kh, g, t), -jnp.inf, jnp.float32),
        jnp.zeros((b, kh, g, t), jnp.float32),
        jnp.zeros((b, t, kh, g, h), jnp.float32),
    )
    (m, l_sum, acc), _ = jax.lax.scan(step, init, jnp.arange(nb))
    out = acc / jnp.moveaxis(l_sum, 3, 1)[..., None]
    return out.astype(v.dtype).reshape(b, t, n, h)


def cudnn_attention(q, k, v, mask: Mask) -> jax.Array:
    allowed = _allowed(mask)
    return jax.nn.dot_product_attention(
        q, k, v, mask=None if allowed is None else allowed[:, None], implementation="cudnn"
    )


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _splash_local(q, k, v, q_seg, k_seg, *, causal: bool, block: int, interpret: bool):
    """Per-shard splash: q [b,T,N,H], k/v [b,S,K,H], segs [b,T]/[b,S] int32 -> [b,T,N,H]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk  # noqa: PLC0415 heavy
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm  # noqa: PLC0415 heavy

    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    base = sm.CausalMask((t, s)) if causal else sm.FullMask((t, s))
    bq, bk = math.gcd(block, t), math.gcd(block, s)
    sizes = sk.BlockSizes(
        block_q=bq,
        block_kv=bk,
        block_kv_compute=bk,
        block_q_dkv=bq,
        block_kv_dkv=bk,
        block_kv_dkv_compute=bk,
        block_q_dq=bq,
        block_kv_dq=bk,
    )
    kernel = sk.make_splash_mqa(
        sm.MultiHeadMask([base] * g), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )
    qg = (q * jnp.asarray(h**-0.5, q.dtype)).reshape(b, t, kh, g, h).transpose(0, 2, 3, 1, 4)  # [b,K,G,T,H]
    kk, vv = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b,K,S,H]

    def one(qx, kx, vx, qs, ks):  # qx [G,T,H], kx [S,H]
        return kernel(qx, kx, vx, segment_ids=sk.SegmentIds(q=qs, kv=ks))

    per_kv = jax.vmap(one, in_axes=(0, 0, 0, None, None))
    out = jax.vmap(per_kv)(qg, kk, vv, q_seg, k_seg)  # [b,K,G,T,H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def splash_attention(q, k, v, mask: Mask, block: int = 512, interpret: bool = False) -> jax.Array:
    """Causal or segment-masked attention with the Pallas splash kernel, one call per batch shard.

    Needs T == S (no KV cache). Lengths are padded to a multiple of 128 (padding is its own segment).
    Under a context mesh (`jax.set_mesh`) the kernel runs per shard: batch over the mesh's data/fsdp axes,
    KV heads over tensor when they divide.
    """
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    if mask.causal and t != s:
        raise ValueError("splash attention needs T == S (no KV cache); use 'chunked' for cached decoding")
    if mask.causal:
        if mask.k_valid is None:
            seg = jnp.ones((b, s), jnp.int32)
        else:
            seg = jnp.broadcast_to(mask.k_valid.astype(jnp.int32), (b, s))
        q_seg, k_seg = seg, seg
    else:
        ones_t, ones_s = jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s), jnp.int32)
        q_seg = ones_t if mask.q_seg is None else jnp.broadcast_to(mask.q_seg, (b, t)).astype(jnp.int32)
        k_seg = ones_s if mask.k_seg is None else jnp.broadcast_to(mask.k_seg, (b, s)).astype(jnp.int32)
        if mask.k_valid is not None:
            k_seg = jnp.where(jnp.broadcast_to(mask.k_valid, (b, s)) > 0, k_seg, -2)
    tp, sp = _round_up(t, 128), _round_up(s, 128)
    if tp != t or sp != s:
        q, k, v = _pad_keys(q, tp - t), _pad_keys(k, sp - s), _pad_keys(v, sp - s)
        q_seg, k_seg = _pad_keys(q_seg, tp - t, value=-3), _pad_keys(k_seg, sp - s, value=-3)
    blk = max(128, block // 128 * 128)
    fn = lambda *a: _splash_local(*a, causal=mask.causal, block=blk, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.shape and mesh.shape[a] > 1)
        bsize = int(np.prod([mesh.shape[a] for a in batch_axes])) if batch_axes else 1
        bspec = (batch_axes if len(batch_axes) > 1 else batch_axes[0]) if batch_axes and b % bsize == 0 else None
        hspec = (
            "tensor" if "tensor" in mesh.shape and mesh.shape["tensor"] > 1 and kh % mesh.shape["tensor"] == 0 else None
        )
        qkv = P(bspec, None, hspec, None)
        seg = P(bspec, None)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, seg, seg), out_specs=qkv, check_vma=False)
    out = _default_precision(fn)(q, k, v, q_seg, k_seg)
    return out[:, :t]


def _default_precision(fn):
    """fn traced (forward and backward) under the default matmul precision. The splash kernel's dots take the
    global `jax_default_matmul_precision`; under "highest" (the fp32 parity tests set it) bf16 operands get
    contract_precision<fp32> and Mosaic rejects the kernel ("Bad lhs type"). The backward is traced at transpose
    time, outside any context set here, so the vjp is taken inside a custom_vjp whose bwd re-enters the context."""

    @jax.custom_vjp
    def call(*args):
        with jax.default_matmul_precision("default"):
            return fn(*args)

    def fwd(*args):
        with jax.default_matmul_precision("default"):
            out, vjp = jax.vjp(fn, *args)
        return out, vjp

    def bwd(vjp, g):
        with jax.default_matmul_precision("default"):
            return vjp(g)

    call.defvjp(fwd, bwd)
    return call


def local_segment_attention(q, k, v, seg, max_segment: int, block: int = 128) -> jax.Array:
    """Attention within contiguous segments of at most `max_segment` positions (vision windows in window order).

    q/k/v [P, n, hd] (one row), seg [P] -> [P, n, hd]. Queries go in blocks of `block`; each block attends
    only the key window [start of its first query's segment, + block + 2 * max_segment), which holds every
    key of its segments: compute and memory O(P x (block + 2 * max_segment)) instead of O(P^2), exact.
    """
    p, n, h = q.shape
    width = block + 2 * max_segment
    if width >= p:
        return dense_attention(q[None], k[None], v[None], segment_mask(seg))[0]
    nb = -(-p // block)
    pad = nb * block - p
    idx = jnp.arange(p)
    change = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
    start = jax.lax.cummax(jnp.where(change, idx, 0))  # first index of each segment
    first = jnp.minimum(jnp.arange(nb) * block, p - 1)
    k_lo = jnp.clip(start[first], 0, p - width)  # [nb]
    qb = _pad_keys(q[None], pad, axis=1)[0].reshape(nb, block, n, h) * jnp.asarray(h**-0.5, q.dtype)
    qs = _pad_keys(seg[None], pad, axis=1, value=-1)[0].reshape(nb, block)
    take = jax.vmap(lambda x, lo: jax.lax.dynamic_slice_in_dim(x, lo, width, axis=0), in_axes=(None, 0))
    kb, vb, ks = take(k, k_lo), take(v, k_lo), take(seg, k_lo)  # [nb, W, n, h], [nb, W]
    sc = jnp.einsum("bqnh,bknh->bnqk", qb, kb, preferred_element_type=jnp.float32)
    sc = jnp.where((qs[:, :, None] == ks[:, None, :])[:, None], sc, NEG_INF)
    probs = jax.nn.softmax(sc, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, vb).reshape(nb * block, n, h)
    return out[:p]


def segment_attention(q, k, v, seg, block: int = 256) -> jax.Array:
    """Attention within segments whose ids never decrease along the sequence (a row's images in the vision
    tower's full-attention blocks), skipping the blocks no segment spans.

    q/k/v [P, n, hd] (one row), seg [P] non-decreasing -> [P, n, hd]. Query blocks of `block` run in sequence;
    each scans the key blocks with an online softmax and computes only those whose segment range meets its
    own (a cond, so a skipped block costs nothing), so k images of P/k patches cost ~P^2/k, not P^2, as
    attending each image alone does. Exact to fp32 round-off against dense attention with segment_mask(seg).
    """
    p, n, h = q.shape
    if p <= block:  # one block: nothing to skip (and no data-dependent branch)
        return dense_attention(q[None], k[None], v[None], segment_mask(seg))[0]
    nb = -(-p // block)
    pad = nb * block - p
    valid = _pad_keys(jnp.ones((1, p), bool), pad, value=False)[0].reshape(nb, block)
    seg = _pad_keys(seg[None], pad, value=-1)[0].reshape(nb, block)
    real_seg = jnp.where(valid, seg, seg.max())  # padding (id -1) counts in the last segment's range
    lo, hi = real_seg.min(axis=1), real_seg.max(axis=1)  # [nb] segment range of each block
    blocks = lambda x: _pad_keys(x[None], pad)[0].reshape(nb, block, n, h)
    qb, kb, vb = blocks(q) * jnp.asarray(h**-0.5, q.dtype), blocks(k), blocks(v)

    def query_block(i):
        qi, qs = qb[i], seg[i]

        @jax.checkpoint
        def key_block(carry, j):
            def attend(carry):
                m_prev, l_prev, acc = carry  # [n, B], [n, B], [B, n, h] f32
                sc = jnp.einsum("qnh,knh->nqk", qi, kb[j], preferred_element_type=jnp.float32)
                ok = (qs[:, None] == seg[j][None, :]) & valid[j][None, :]
                sc = jnp.where(ok[None], sc, -jnp.inf)
                m_new = jnp.maximum(m_prev, sc.max(-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                prob = jnp.exp(sc - m_safe[..., None])
                corr = jnp.exp(jnp.where(jnp.isfinite(m_prev), m_prev, 0.0) - m_safe) * jnp.isfinite(m_prev)
                pv = jnp.einsum("nqk,knh->qnh", prob.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)
                return m_new, l_prev * corr + prob.sum(-1), acc * corr.T[..., None] + pv

            meets = (lo[j] <= hi[i]) & (hi[j] >= lo[i])
            return jax.lax.cond(meets, attend, lambda c: c, carry), None

        init = (
            jnp.full((n, block), -jnp.inf, jnp.float32),
            jnp.zeros((n, block), jnp.float32),
            jnp.zeros((block, n, h), jnp.float32),
        )
        (_, l_sum, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nb))
        return acc / jnp.maximum(l_sum, 1e-30).T[..., None]

    out = jax.lax.map(query_block, jnp.arange(nb))  # [nb, B, n, h]
    return out.reshape(nb * block, n, h)[:p].astype(v.dtype)


def attention(q, k, v, mask: Mask, impl: str = "xla", block: int = 512) -> jax.Array:
    """Dispatch on ModelConfig.attention. q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H]."""
    if impl == "xla":
        return dense_attention(q, k, v, mask)
    if impl == "chunked":
        return chunked_attention(q, k, v, mask, block)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask)
    if impl == "splash":
        if mask.causal and q.shape[1] != k.shape[1]:
            return chunked_attention(q, k, v, mask, block)
        return splash_attention(q, k, v, mask, block)
    raise ValueError(f"unknown attention implementation {impl!r}; expected one of {IMPLEMENTATIONS}")
