"""KV-cache sampler: one jitted prefill over text and images, then a jitted decode loop.

Static shapes throughout: the cache holds prompt + max_new_tokens slots; generated token j sits in slot
T + j, and its M-RoPE position is (slot + delta) on all three axes, exactly as transformers continues
decoding after a left-padded multimodal prefill. Rows stop independently at any of the stop tokens (later
slots get pad tokens, log-prob 0 and completion_mask 0). Log-probs are of the untruncated distribution at the
sampling temperature, softmax(logits / T) (what the trainer recomputes; see select.py for top-p/top-k).
With group_size G the prompts are prefilled once (vision tower and prompt forward run once per prompt) and
the KV cache is broadcast to the G samples; prefill computes logits at the last position only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.model.positions import rope_index
from dmx_jax.model.text import init_cache
from dmx_jax.model.vision import vision_inputs as make_vision_inputs
from dmx_jax.sampling.select import select_tokens


@dataclasses.dataclass(frozen=True)
class Decoding:
    """The static settings of one compiled sampler (hashable: generate_arrays compiles once per Decoding).
    temperature 0 is greedy; stop_token_ids: any number of ids that end a row; cache_dtype: KV-cache dtype (None:
    the model's compute dtype); group_size G: samples per prompt sharing one prefill; micro_batches k: the batch
    decoded as k sequential slices (row i in slice i % k, so a batch sharded in contiguous blocks stays local),
    each with its own random stream."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    pad_id: int = 0
    cache_dtype: Any = None
    group_size: int = 1
    micro_batches: int = 1


PROMPT_KEYS = ("input_ids", "attention_mask", "positions", "deltas")  # + optional pixel_values, vision_inputs


@functools.partial(jax.jit, static_argnames=("graphdef", "decoding"))
def generate_arrays(graphdef, params, prompts: dict, rng, decoding: Decoding):
    """The sampler's jitted entry point on the data pipeline's prompt arrays: input_ids [P, T] (left-padded),
    attention_mask [P, T], positions [P, 3, T] (batch-major rows), deltas [P, 1], and per-row pixel_values
    [P, N, F] + vision_inputs when the prompts have images. The evaluation loop, GRPO rollouts and `generate`
    call it. -> (tokens, logps, completion_mask) [P * G, max_new_tokens], groups contiguous."""
    model = nnx.merge(graphdef, params)
    ids, mask = prompts["input_ids"].astype(jnp.int32), prompts["attention_mask"].astype(jnp.int32)
    positions = jnp.swapaxes(prompts["positions"], 0, 1).astype(jnp.int32)  # rows [P, 3, T] -> [3, P, T]
    deltas = prompts["deltas"].astype(jnp.int32).reshape(-1, 1)
    pixels, vin = prompts.get("pixel_values"), prompts.get("vision_inputs")
    k = decoding.micro_batches
    if k == 1:
        return _decode(model, ids, positions, mask, deltas, pixels, vin, rng, decoding)
    split = lambda x: None if x is None else jax.tree.map(lambda a: _strided_split(a, k, 0), x)
    xs = (
        split(ids),
        _strided_split(positions, k, 1),
        split(mask),
        split(deltas),
        split(pixels),
        split(vin),
        jax.random.split(rng, k),
    )
    outs = jax.lax.map(lambda args: _decode(model, *args, decoding), xs)
    return tuple(_strided_join(o, decoding.group_size) for o in outs)


def _strided_split(x, k: int, axis: int):
    """[.., B, ..] -> [k, .., B/k, ..]: row i goes to slice i % k (axis = the batch axis of x)."""
    b = x.shape[axis]
    if b % k:
        raise ValueError(f"batch of {b} rows does not split into {k} micro-batches")
    x = x.reshape(x.shape[:axis] + (b // k, k) + x.shape[axis + 1 :])
    return jnp.moveaxis(x, axis + 1, 0)


def _strided_join(x, group_size: int):
    """Inverse of _strided_split for outputs [k, (B/k) * G, ...] whose rows are groups of G per prompt."""
    k, n = x.shape[:2]
    x = x.reshape((k, n // group_size, group_size) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((k * n,) + x.shape[3:])


def _decode(model, input_ids, positions, attention_mask, deltas, pixel_values, vision_inputs, rng, decoding: Decoding):
    """Prefill P prompts once (vision tower included), logits at the last position only, then broadcast the
    KV cache to the G samples of each group and decode P * G rows."""
    d = decoding
    max_new_tokens, group_size, pad_id, stop_token_ids = d.max_new_tokens, d.group_size, d.pad_id, d.stop_token_ids
    cache_dtype = None if d.cache_dtype is None else jnp.dtype(d.cache_dtype)
    p, t = input_ids.shape
    b = p * group_size
    cache = init_cache(model.cfg.text, p, t + max_new_tokens, cache_dtype or model.dtype)
    key_mask = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.ones((p, max_new_tokens), jnp.int32)], axis=1)
    hidden, cache = model.hidden_states(
        input_ids, positions, attention_mask, pixel_values, vision_inputs, cache=cache, key_mask=key_mask
    )
    last = model.logits(hidden[:, -1:])[:, 0]  # [P, V]: never [P, T, V]
    offset = next_position_offset(deltas, attention_mask)  # [P, 1]: slot t + j -> position t + j + offset
    if group_size > 1:  # the G samples share the prefilled cache
        rep = lambda x: jnp.repeat(x, group_size, axis=0)
        cache = {
            "k": jnp.repeat(cache["k"], group_size, axis=1),
            "v": jnp.repeat(cache["v"], group_size, axis=1),
            "index": cache["index"],
        }
        last, offset, key_mask = rep(last), rep(offset), rep(key_mask)
    stops = jnp.asarray(stop_token_ids if stop_token_ids else (-1,), jnp.int32)

    def pick(logits_last, key):
        return select_tokens(logits_last, key, temperature=d.temperature, top_k=d.top_k, top_p=d.top_p)

    tok, lp = pick(last, jax.random.fold_in(rng, 0))
    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(tok)
    logps = jnp.zeros((b, max_new_tokens), jnp.float32).at[:, 0].set(lp)
    cmask = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(1)
    done = jnp.isin(tok, stops)

    def body(carry):
        j, tokens, logps, cmask, done, cache = carry
        prev = tokens[:, j - 1]
        pos = jnp.broadcast_to((t + j - 1 + offset[:, 0])[None, :, None], (3, b, 1)).astype(jnp.int32)
        logits, cache = model.forward(prev[:, None], pos, key_mask, cache=cache, key_mask=key_mask)
        tok, lp = pick(logits[:, -1], jax.random.fold_in(rng, j))
        tok = jnp.where(done, pad_id, tok)
        lp = jnp.where(done, 0.0, lp)
        cmask = cmask.at[:, j].set((~done).astype(jnp.int32))
        done = done | jnp.isin(tok, stops)
        return j + 1, tokens.at[:, j].set(tok), logps.at[:, j].set(lp), cmask, done, cache

    def unfinished(carry):  # stop early once every row has emitted a stop token (rest stays padded)
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[4])

    _, tokens, logps, cmask, done, _ = jax.lax.while_loop(unfinished, body, (1, tokens, logps, cmask, done, cache))
    return tokens, logps, cmask


def stop_token_ids(tokenizer=None, generation_config=None, extra=()) -> tuple[int, ...]:
    """Every id that ends a completion: the tokenizer's <|im_end|> and <|endoftext|> / eos, and the
    checkpoint's generation_config eos_token_id (an int or a list; a dict or an object with that field)."""
    ids: list[int] = []

    def add(v):
        if v is None:
            return
        for x in v if isinstance(v, (list, tuple)) else [v]:
            if x is not None and int(x) >= 0 and int(x) not in ids:
                ids.append(int(x))

    if tokenizer is not None:
        for name in ("im_end_id", "eos_id", "eos_token_id", "endoftext_id"):
            add(getattr(tokenizer, name, None))
        convert = getattr(tokenizer, "convert_tokens_to_ids", None) or getattr(tokenizer, "token_to_id", None)
        if convert is not None:
            for tok in ("<|im_end|>", "<|endoftext|>"):
                try:
                    v = convert(tok)
                except Exception:
                    v = None
                unk = getattr(tokenizer, "unk_token_id", None)
                add(None if v == unk else v)
    if generation_config is not None:
        add(
            generation_config.get("eos_token_id")
            if isinstance(generation_config, dict)
            else getattr(generation_config, "eos_token_id", None)
        )
    add(list(extra))
    return tuple(ids)


def prepare_prompts(
    model_cfg,
    input_ids,
    attention_mask=None,
    image_grid_thw=None,
    positions=None,
    deltas=None,
    pad_patches_to: int | None = None,
):
    """Host side: M-RoPE positions [3, B, T] + deltas [B, 1] (computed unless given, then in that layout) and vision
    inputs for a left-padded prompt batch -> (ids, mask, positions, deltas, vision_inputs)."""
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if np.any(mask[:, -1] == 0):
        raise ValueError("prompts must be left-padded: the last position of every row must be a real token")
    vin = None
    if image_grid_thw is not None and np.asarray(image_grid_thw).ndim == 2:
        vin = make_vision_inputs(np.asarray(image_grid_thw), model_cfg.vision, pad_to=pad_patches_to)
    if positions is None:
        positions, deltas = rope_index(
            ids,
            image_grid_thw if vin is not None else None,
            mask,
            spatial_merge_size=model_cfg.vision.spatial_merge_size,
            image_token_id=model_cfg.image_token_id,
        )
    return ids, mask, positions, deltas, vin


def generate(
    model,
    input_ids,
    *,
    pixel_values=None,
    image_grid_thw=None,
    attention_mask=None,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    rng=None,
    stop_token_ids: Sequence[int] = (),
    pad_id: int | None = None,
    return_logprobs: bool = False,
    positions=None,
    deltas=None,
    vision_inputs=None,
):
    """Generate up to `max_new_tokens` per row -> tokens int32 [B, max_new_tokens] (+ (logprobs, mask)).

    Inputs are laid out as for the model's forward (transformers layout: left-padded input_ids, flat
    pixel_values [P, C*T*p*p] with image_grid_thw [N, 3]); batched per-example images with precomputed
    `positions`/`deltas`/`vision_inputs` (the data pipeline's layout: positions [B, 3, T], batch-major rows,
    deltas [B, 1]) are accepted too.
    """
    cfg = model.cfg
    if positions is not None:
        positions = np.swapaxes(np.asarray(positions), 0, 1)  # rows [B, 3, T] -> [3, B, T]
    if vision_inputs is None:
        ids, mask, positions, deltas, vin = prepare_prompts(
            cfg, input_ids, attention_mask, image_grid_thw, positions, deltas
        )
        if pixel_values is not None and np.ndim(pixel_values) == 2 and ids.shape[0] > 1:
            pixel_values, vin = rowwise_images(cfg, ids, pixel_values, image_grid_thw)
    else:
        ids = np.asarray(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        vin = vision_inputs
    if temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(...)")
    graphdef, params = nnx.split(model)
    prompts = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray(mask),
        "positions": jnp.swapaxes(jnp.asarray(positions), 0, 1),
        "deltas": jnp.asarray(deltas),
    }
    if pixel_values is not None:
        prompts["pixel_values"] = jnp.asarray(pixel_values)
    if vin is not None:
        prompts["vision_inputs"] = jax.tree.map(jnp.asarray, vin)
    decoding = Decoding(
        int(max_new_tokens),
        float(temperature),
        int(top_k),
        float(top_p),
        tuple(int(s) for s in stop_token_ids),
        int(cfg.pad_token_id if pad_id is None else pad_id),
    )
    tokens, logps, cmask = generate_arrays(
        graphdef, params, prompts, rng if rng is not None else jax.random.key(0), decoding
    )
    return (tokens, (logps, cmask)) if return_logprobs else tokens


def rowwise_images(model_cfg, input_ids, pixel_values, image_grid_thw):
    """Flat transformers layout (all images' patches in one sequence) -> per-row layout: pixel_values
    [B, P_max, F] zero-padded and batch-major vision inputs, row b holding the images whose tokens it has.

    The vision tower attends within a masked packed sequence, so packing B rows' images costs O((sum P)^2);
    per row it is O(B * P_row^2) (at batch 8 with one 224 px image each: prefill 195 ms -> see BUILD_NOTES)."""
    ids = np.asarray(input_ids)
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    unit = model_cfg.vision.spatial_merge_size**2
    tokens_per_image = grid.prod(axis=1) // unit
    starts = np.concatenate([[0], np.cumsum(grid.prod(axis=1))])
    pv = np.asarray(pixel_values)
    spans, row_grids, img = [], [], 0  # spans: row b's patches are pv[first:last]
    for b in range(ids.shape[0]):
        need, first = int((ids[b] == model_cfg.image_token_id).sum()), img
        while need > 0 and img < len(grid):
            need -= int(tokens_per_image[img])
            img += 1
        if need != 0:
            raise ValueError(f"row {b}: its image tokens do not match whole images of image_grid_thw")
        spans.append((starts[first], starts[img]))
        row_grids.append(grid[first:img])
    if img != len(grid):
        raise ValueError(f"image_grid_thw has {len(grid)} images but the rows' image tokens cover {img}")
    p_max = int(max(last - first for first, last in spans))
    pixels = np.zeros((ids.shape[0], p_max, pv.shape[1]), pv.dtype)
    for b, (first, last) in enumerate(spans):
        pixels[b, : last - first] = pv[first:last]
    vins = [_row_vision_inputs(tuple(map(tuple, g.tolist())), model_cfg.vision, p_max) for g in row_grids]
    return pixels, {k: np.stack([v[k] for v in vins]) for k in vins[0]}


@functools.lru_cache(maxsize=256)
def _row_vision_inputs(grids: tuple, vision_cfg, pad_to: int) -> dict:
    """vision_inputs of one row's images, memoised: rows of a batch (and batches) mostly share image sizes."""
    return make_vision_inputs(np.asarray(grids, np.int64).reshape(-1, 3), vision_cfg, pad_to=pad_to)


def next_position_offset(deltas, attention_mask):
    """[B, 1] offset such that the token at slot T + j (j >= 0) after a left-padded prompt of length T sits at
    M-RoPE position T + j + offset = last prompt position + 1 + j, as in transformers' generate: its
    rope delta is relative to the row's valid length n (max + 1 - n), so offset = delta + n - T."""
    mask = jnp.asarray(attention_mask)
    valid = jnp.sum(mask, axis=1, keepdims=True, dtype=jnp.int32)
    return jnp.asarray(deltas).reshape(-1, 1).astype(jnp.int32) + valid - mask.shape[1]


def completion_positions(prompt_positions, deltas, num_new: int, attention_mask=None):
    """M-RoPE positions [3, B, T + num_new] for prompt + completion, continuing as the sampler does
    (completion token j at slot T + j has position last prompt position + 1 + j on every axis). The trainer
    uses this so its recomputed log-probs are those of the sampled sequence. attention_mask: the prompt's
    [B, T] mask (left padding); None means no padding."""
    prompt_positions = jnp.asarray(prompt_positions)
    _, b, t = prompt_positions.shape
    mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask
    comp = (t + jnp.arange(num_new))[None, :] + next_position_offset(deltas, mask)
    comp = jnp.broadcast_to(comp[None], (3, b, num_new)).astype(prompt_positions.dtype)
    return jnp.concatenate([prompt_positions, comp], axis=2)
