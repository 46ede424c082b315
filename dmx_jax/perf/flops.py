"""Model FLOPs of Qwen2.5-VL, vision encoder and projector counted (most VLM MFU figures leave them out).

Formula (matmul FLOPs only; a multiply-add = 2 FLOPs; norms, rotary, softmax and activations ignored):

text, per layer and token:   2·D·(N·H + 2·K·H) [q,k,v]  + 2·N·H·D [o]  + 6·D·F [SwiGLU]
                             + 4·N·H·C  [scores + weighted sum over C attended keys]
text head, per token:        2·D·V
vision, per patch and block: 2·Dv·3·Dv [qkv] + 2·Dv·Dv [proj] + 6·Dv·Fv [SwiGLU] + 4·Dv·C_v
                             with C_v = tokens in the patch's window (window blocks) or image (full blocks)
patch embed, per patch:      2·(C·T·P·P)·Dv
merger, per merged token:    2·(Dv·m²)² + 2·(Dv·m²)·D

For causal text attention C is the mean number of attended keys, (T+1)/2 for a full row of T tokens.
Training counts forward + backward = 3 × forward (no remat recompute: MFU counts model FLOPs only).

`attention="executed"` counts what the xla implementation runs instead: C = T for text rows (dense masked),
C = all packed patches for full-attention vision blocks (dense segment mask), and for window blocks the
bounded key range of `local_segment_attention` (query blocks of 128 against 128 + 2 windows of keys).
Executed FLOPs are what tests/test_flops.py checks, exactly, against the dot products in the jitted forward's jaxpr.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Dense bf16 peak per device (FLOP/s), from vendor datasheets.
PEAK_BF16 = {
    "h100": 989e12,
    "h200": 989e12,
    "a100": 312e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


@dataclasses.dataclass(frozen=True)
class FlopCount:
    text: float
    lm_head: float
    vision: float
    merger: float

    @property
    def total(self) -> float:
        return self.text + self.lm_head + self.vision + self.merger

    def scaled(self, k: float) -> FlopCount:
        return FlopCount(self.text * k, self.lm_head * k, self.vision * k, self.merger * k)


def _window_sizes(grid_thw: Sequence[int], vcfg) -> list[int]:
    """Patch counts of the attention windows of one image (in patches, not merged tokens)."""
    t, h, w = (int(x) for x in grid_thw)
    m = vcfg.spatial_merge_size
    win = max(vcfg.window_size // m // vcfg.patch_size, 1)  # merged tokens per window side
    gh, gw = h // m, w // m
    sizes = []
    for i in range(0, gh, win):
        for j in range(0, gw, win):
            sizes.append(min(win, gh - i) * min(win, gw - j) * m * m)
    return sizes * t


LOCAL_QUERY_BLOCK = 128  # dmx_jax.model.attention.local_segment_attention's query block


def _executed_window(packed: int, vcfg) -> float:
    """Scores + weighted sum of one window block as local_segment_attention runs it over `packed` patches: each
    block of LOCAL_QUERY_BLOCK queries against LOCAL_QUERY_BLOCK + 2 windows of keys (dense when that covers all)."""
    m = vcfg.spatial_merge_size
    window = (vcfg.window_size // m // vcfg.patch_size) ** 2 * m * m
    width = LOCAL_QUERY_BLOCK + 2 * window
    if width >= packed:
        return 4.0 * vcfg.hidden_size * packed * packed
    return 4.0 * vcfg.hidden_size * -(-packed // LOCAL_QUERY_BLOCK) * LOCAL_QUERY_BLOCK * width


def forward_flops(
    cfg,
    *,
    text_tokens: int,
    seq_len: int | None = None,
    image_grids: Sequence[Sequence[int]] = (),
    lm_head_tokens: int | None = None,
    attention: str = "model",
    vision_patches: int | None = None,
) -> FlopCount:
    """Forward FLOPs for `text_tokens` decoder positions (image tokens included) and the given images.

    seq_len: the row length for causal attention (default: text_tokens, one sequence).
    lm_head_tokens: positions whose logits are computed (default: all).
    attention: "model" (causal / windowed: the useful work) or "executed" (dense masked, as computed here).
    vision_patches: executed only: the padded length of the packed patch sequence (default: sum of grids).
    """
    if attention not in ("model", "executed"):
        raise ValueError(f"forward_flops: attention must be 'model' or 'executed', got {attention!r}")
    t = cfg.text
    d, n, k, f, v = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.intermediate_size, t.vocab_size
    h = d // n if getattr(t, "head_dim", None) in (None, 0) else t.head_dim
    seq_len = seq_len or text_tokens
    ctx = (seq_len + 1) / 2 if attention == "model" else seq_len
    per_tok = 2 * d * (n * h + 2 * k * h) + 2 * n * h * d + 6 * d * f + 4 * n * h * ctx
    text = per_tok * t.num_hidden_layers * text_tokens
    head = 2 * d * v * (text_tokens if lm_head_tokens is None else lm_head_tokens)
    vis = merger = 0.0
    if image_grids:
        vc = cfg.vision
        dv, fv, m = vc.hidden_size, vc.intermediate_size, vc.spatial_merge_size
        patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        full = set(vc.fullatt_block_indexes)
        packed = vision_patches or sum(int(np.prod(g)) for g in image_grids)
        n_full = sum(1 for blk in range(vc.depth) if blk in full)
        for grid in image_grids:
            patches = int(np.prod(grid))
            windows = _window_sizes(grid, vc)
            dense = 2 * dv * 3 * dv + 2 * dv * dv + 6 * dv * fv
            attn_window = sum(4 * dv * s * s for s in windows)  # sum over patches of 4·Dv·window
            attn_full = 4 * dv * patches * patches
            if attention == "executed":  # attention added once for the packed row
                attn_window = attn_full = 0
            for blk in range(vc.depth):
                vis += dense * patches + (attn_full if blk in full else attn_window)
            vis += 2 * patch_dim * dv * patches
            dm = dv * m * m
            merger += (2 * dm * dm + 2 * dm * vc.out_hidden_size) * patches / (m * m)
        if attention == "executed":
            vis += n_full * 4 * dv * packed * packed + (vc.depth - n_full) * _executed_window(packed, vc)
    return FlopCount(text=float(text), lm_head=float(head), vision=float(vis), merger=float(merger))


def train_flops(cfg, **kw) -> FlopCount:
    return forward_flops(cfg, **kw).scaled(3.0)


def batch_train_flops(cfg, arrays: dict) -> float:
    """Model FLOPs of one training step on a model-input batch: real tokens (attention_mask), its row length,
    and the images: `image_grid_thw` rows when the batch has them (all-zero padding rows skipped), otherwise
    one grid per row rebuilt from its image-pad token count (exact for the dense terms; window sizes assume
    the most square grid with that many merged tokens)."""
    ids = np.asarray(arrays["input_ids"])
    mask = arrays.get("attention_mask")
    tokens = int(np.asarray(mask).sum()) if mask is not None else ids.size
    if "image_grid_thw" in arrays:
        grids = [g for g in np.asarray(arrays["image_grid_thw"]).reshape(-1, 3).tolist() if int(np.prod(g)) > 0]
    else:
        m = cfg.vision.spatial_merge_size
        grids = []
        for n in (ids.reshape(-1, ids.shape[-1]) == cfg.image_token_id).sum(axis=1).tolist():
            if n:
                side = max(d for d in range(1, int(np.sqrt(n)) + 1) if n % d == 0)
                grids.append([1, m * side, m * (n // side)])
    return train_flops(cfg, text_tokens=tokens, seq_len=ids.shape[-1], image_grids=grids).total


def peak_flops_per_device(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for name, peak in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return peak
    return None


def mfu(flops_per_step: float, step_time_s: float, num_devices: int, peak_per_device: float | None) -> float | None:
    if not peak_per_device or step_time_s <= 0:
        return None
    return flops_per_step / step_time_s / (num_devices * peak_per_device)
