"""Jitted dmx-jax forward with several real-size CXR images per row vs transformers eager, CPU, fp32.

    python -m bench.bench_forward_images [--images 3] [--size 512] [--iters 3] [--attention xla]

A small random Qwen2.5-VL (real vision geometry: patch 14, merge 2, window 112, 4 vision blocks with two
full-attention blocks; narrow widths so the CPU run takes seconds) is saved with transformers' save_pretrained
and loaded by dmx_jax.hf.load_pretrained; the same pixel_values / image_grid_thw go to both. Reports the
median wall time of a forward (after compile / warm-up), of the vision tower alone (dmx-jax `encode_images`
jitted, transformers `model.visual`), the speed-ups and max |d logits|, and records them in RESULTS.md
("Forward with real-size CXR images vs transformers eager"; --no-record to print only).
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from bench.common import machine, record_result, timed
from dmx_jax.hf import load_pretrained, read_config
from dmx_jax.model import rope_index, vision_inputs

IMAGE, VSTART, VEND = 997, 995, 996


def reference(depth=4, hidden=128, heads=2):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_act="silu",
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=depth,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_heads=heads,
            in_channels=3,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=128,
            fullatt_block_indexes=[1, 3],
            hidden_act="silu",
            tokens_per_second=2,
        ),
        image_token_id=IMAGE,
        video_token_id=998,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def inputs(n_images: int, size: int, seed: int = 0):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: PLC0415 heavy

    r = np.random.default_rng(seed)
    imgs = [
        Image.fromarray(r.integers(0, 255, (size + 40 * i, size - 24 * i), dtype=np.uint8), "L")
        for i in range(n_images)
    ]
    f = Qwen2VLImageProcessorPil(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=56 * 56, max_pixels=262_144
    )(images=imgs, return_tensors="np")
    grid = f["image_grid_thw"]
    ids = [1, 10, 11]
    for g in grid:
        ids += [VSTART] + [IMAGE] * (int(np.prod(g)) // 4) + [VEND, 20, 21]
    ids = np.array([ids + [30, 31, 32]])
    return ids, np.ones_like(ids), f["pixel_values"], grid


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--attention", default="xla")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    import torch  # noqa: PLC0415 heavy

    torch.manual_seed(0)
    ref = reference()
    ids, mask, pv, grid = inputs(args.images, args.size)
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        model, cfg = load_pretrained(d, config=read_config(d).replace(attention=args.attention))
    pos, _ = rope_index(ids, grid, mask, image_token_id=IMAGE)
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, *a: nnx.merge(graphdef, s).forward(*a)[0])
    args_j = (state, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask), jnp.asarray(pv), vin)
    got = np.asarray(fwd(*args_j))
    t_jax = timed(lambda: jax.block_until_ready(fwd(*args_j)), warmup=1, iters=args.iters)
    tower = jax.jit(lambda s, pv, vin: nnx.merge(graphdef, s).encode_images(pv, vin))
    tv_jax = timed(lambda: jax.block_until_ready(tower(state, args_j[4], vin)), warmup=1, iters=args.iters)
    ti = dict(
        input_ids=torch.as_tensor(ids),
        attention_mask=torch.as_tensor(mask),
        pixel_values=torch.as_tensor(pv),
        image_grid_thw=torch.as_tensor(grid),
        mm_token_type_ids=torch.as_tensor((ids == IMAGE).astype(np.int64)),
    )
    with torch.no_grad():
        want = ref(**ti).logits.numpy()
        t_torch = timed(lambda: ref(**ti), warmup=1, iters=args.iters)
        tv_torch = timed(
            lambda: ref.model.visual(ti["pixel_values"], grid_thw=ti["image_grid_thw"]), warmup=1, iters=args.iters
        )
    patches = int(np.prod(grid, axis=-1).sum())
    header = ["images per row", "image size", "patches", "tokens", "attention"] + [
        "forward jit ms",
        "forward eager ms",
        "speed-up",
        "tower jit ms",
        "tower eager ms",
        "tower speed-up",
        "max abs d logits",
    ]
    row = [args.images, args.size, patches, ids.shape[1], args.attention] + [
        f"{1e3 * t_jax:.1f}",
        f"{1e3 * t_torch:.1f}",
        f"{t_torch / t_jax:.2f}x",
        f"{1e3 * tv_jax:.1f}",
        f"{1e3 * tv_torch:.1f}",
        f"{tv_torch / tv_jax:.2f}x",
        f"{np.abs(got - want).max():.1e}",
    ]
    print(" | ".join(f"{h}: {c}" for h, c in zip(header, row)) + f" | {machine()}")
    if not args.no_record:
        note = (
            "fp32, batch 1, median of --iters after a warm-up; tower = the vision tower and merger alone "
            "(dmx-jax `encode_images` jitted, transformers `model.visual`), the rest of the forward is the "
            "2-layer, 128-wide decoder over the image and text tokens."
        )
        record_result(
            "Forward with real-size CXR images vs transformers eager", header, [row], note=note, key_columns=5
        )


if __name__ == "__main__":
    main()
