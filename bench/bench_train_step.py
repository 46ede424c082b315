"""SFT train step: dmx-jax (jit, AdamW) vs transformers + torch (eager and sdpa attention, AdamW), same
config, batch and inputs, one process. Reports tokens/s (image and text tokens separately), the ratio,
and the peak RSS growth of each framework's phase.

usage: python -m bench.bench_train_step [--configs tiny,qwen0_5b] [--batch 2] [--seq 256] [--no-notes]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, peak_rss_gb, record_result, timed
from dmx_jax.model import Qwen25VL, from_hf_config, rope_index, vision_inputs
from dmx_jax.model.config import ModelConfig
from dmx_jax.perf.flops import mfu, peak_flops_per_device, train_flops
from dmx_jax.processing import preprocess_images
from dmx_jax.training.optim import OptimConfig, make_optimizer
from dmx_jax.training.sft import make_sft_loss
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step

SHAPES = {
    # text tower of Qwen2.5-0.5B (494M params with the 151,936 vocab) with a 4-block vision tower
    "qwen0_5b": dict(
        text=dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            mrope_section=[8, 12, 12],
        ),
        vision=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4),
    ),
    "tiny": dict(
        text=dict(
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=[2, 3, 3],
        ),
        vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2),
    ),
}


def hf_config(name):
    from transformers import Qwen2_5_VLConfig  # noqa: PLC0415 heavy

    s = SHAPES[name]
    t, v = s["text"], s["vision"]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            **{k: t[k] for k in t if k != "mrope_section"},
            hidden_act="silu",
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": t["mrope_section"]},
        ),
        vision_config=dict(
            **v,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[v["depth"] - 1],
            out_hidden_size=t["hidden_size"],
            hidden_act="silu",
        ),
        image_token_id=t["vocab_size"] - 3,
        video_token_id=t["vocab_size"] - 4,
        vision_start_token_id=t["vocab_size"] - 2,
        vision_end_token_id=t["vocab_size"] - 1,
        tie_word_embeddings=False,
    )
    return cfg


def step_flops(hf_cfg, ids, grid) -> float:
    """Model FLOPs of one train step (dmx_jax.perf.flops: decoder, head, vision tower and merger)."""
    mcfg = ModelConfig.from_hf_config(hf_cfg.to_dict())
    return train_flops(mcfg, text_tokens=ids.size, seq_len=ids.shape[1], image_grids=np.asarray(grid).tolist()).total


def make_batch(cfg, batch, seq, image_hw=(224, 224)):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, image_hw, dtype=np.uint8) for _ in range(batch)]
    f = preprocess_images(imgs, max_pixels=image_hw[0] * image_hw[1])
    n_img = int(f["image_grid_thw"][0].prod()) // 4
    ids = rng.integers(10, cfg.text_config.vocab_size - 10, size=(batch, seq)).astype(np.int64)
    ids[:, 2] = cfg.vision_start_token_id
    ids[:, 3 : 3 + n_img] = cfg.image_token_id
    ids[:, 3 + n_img] = cfg.vision_end_token_id
    return ids, np.ones_like(ids), f["pixel_values"], f["image_grid_thw"], n_img * batch


def bench_torch(cfg, ids, mask, pv, grid, attn):
    import torch  # noqa: PLC0415 heavy
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation=attn).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    arrays = dict(input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    t = {k: torch.as_tensor(v) for k, v in arrays.items()}
    t["mm_token_type_ids"] = (t["input_ids"] == cfg.image_token_id).int()

    def step(model=model, opt=opt):
        opt.zero_grad(set_to_none=True)
        out = model(**t, labels=t["input_ids"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sec = timed(step, warmup=1, iters=3)
    del step, model, opt  # step holds model and opt through its defaults
    gc.collect()
    return sec


def bench_jax(cfg, ids, mask, pv, grid):
    mcfg = from_hf_config(cfg.to_dict())
    model = Qwen25VL(mcfg, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    tx = make_optimizer(OptimConfig(learning_rate=1e-5, warmup_steps=0, schedule="constant"))
    st = init_train_state(nnx.to_pure_dict(state), tx)
    del model, state
    pos, _ = rope_index(ids, grid, mask, image_token_id=mcfg.image_token_id)
    b = ids.shape[0]
    per = pv.shape[0] // b
    vin = [vision_inputs(grid[i : i + 1], mcfg.vision) for i in range(b)]
    batch = {
        "input_ids": jnp.asarray(ids, jnp.int32),
        "attention_mask": jnp.asarray(mask, jnp.int32),
        "loss_mask": jnp.ones_like(jnp.asarray(ids, jnp.int32)),
        "positions": jnp.asarray(pos.transpose(1, 0, 2)),
        "pixel_values": jnp.asarray(pv.reshape(b, per, -1)),
        "vision_inputs": jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *vin),
    }
    step = jax.jit(make_train_step(graphdef, make_sft_loss(), tx), donate_argnums=(0,))
    holder = [st]

    def run():
        holder[0], m = step(holder[0], batch)
        jax.block_until_ready(m["loss"])

    return timed(run, warmup=1, iters=3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen0_5b")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch  # noqa: PLC0415 heavy

    torch.set_num_threads(os.cpu_count())
    rows = []
    for name in args.configs.split(","):
        cfg = hf_config(name)
        ids, mask, pv, grid, n_img = make_batch(cfg, args.batch, args.seq)
        toks = ids.size
        r0 = peak_rss_gb()
        s_jax = bench_jax(cfg, ids, mask, pv, grid)
        r1 = peak_rss_gb()
        s_eager = bench_torch(cfg, ids, mask, pv, grid, "eager")
        s_sdpa = bench_torch(cfg, ids, mask, pv, grid, "sdpa")
        r2 = peak_rss_gb()
        flops = step_flops(cfg, ids, grid)
        util = mfu(flops, s_jax, jax.device_count(), peak_flops_per_device(jax.devices()[0].device_kind))
        rows.append(
            [
                name,
                f"{args.batch}x{args.seq}",
                f"{toks - n_img}+{n_img}",
                f"{toks / s_jax:,.0f}",
                f"{toks / s_eager:,.0f}",
                f"{toks / s_sdpa:,.0f}",
                f"{s_eager / s_jax:.2f}x / {s_sdpa / s_jax:.2f}x",
                f"{flops / s_jax / 1e12:.3f}" + ("" if util is None else f" ({util:.1%} MFU)"),
                f"{r1 - r0:.2f} / {r2 - r1:.2f}",
            ]
        )
        print(rows[-1], flush=True)
    header = [
        "config",
        "batch",
        "text+image tokens",
        "dmx-jax tok/s",
        "torch eager tok/s",
        "torch sdpa tok/s",
        "speed-up vs eager / sdpa",
        "dmx-jax model TFLOP/s (vision counted)",
        "peak RSS growth GB (jax / torch)",
    ]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_notes:
        record_result(
            "SFT train step vs transformers + torch",
            header,
            rows,
            key_columns=2,
            note="fp32, AdamW. Peak RSS growth is the process high-water mark increase during each phase "
            "(jax first), so the "
            "torch figure is only what torch needed beyond jax's peak.",
        )


if __name__ == "__main__":
    main()
