"""Greedy generation with images: the dmx-jax KV-cache sampler vs transformers `generate`, same weights, same
prompts (one 224x224 image each, left-padded), same number of new tokens (no stop tokens), batch 1 and 8.
Reports new tokens/s and the ratio, and checks that both produced the same tokens.

usage: python -m bench.bench_generate [--configs tiny,qwen0_5b] [--batches 1,8] [--new 64] [--no-notes]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_train_step import hf_config
from bench.common import markdown_table, record_result, timed
from dmx_jax.hf import load_pretrained
from dmx_jax.processing import preprocess_images
from dmx_jax.sampling import generate


def prompts(cfg, batch: int, prompt_len: int = 96, image_hw=(224, 224)):
    """Left-padded prompts of different lengths, one image each (HF layout: flat pixel_values)."""
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, image_hw, dtype=np.uint8) for _ in range(batch)]
    f = preprocess_images(imgs, max_pixels=image_hw[0] * image_hw[1])
    n_img = int(f["image_grid_thw"][0].prod()) // 4
    ids = np.zeros((batch, prompt_len), np.int64)
    mask = np.zeros_like(ids)
    for b in range(batch):
        n = prompt_len - 4 * (b % 3)  # ragged: left padding differs per row
        row = rng.integers(10, cfg.text_config.vocab_size - 10, size=n)
        row[1] = cfg.vision_start_token_id
        row[2 : 2 + n_img] = cfg.image_token_id
        row[2 + n_img] = cfg.vision_end_token_id
        ids[b, prompt_len - n :], mask[b, prompt_len - n :] = row, 1
    return ids, mask, f["pixel_values"], f["image_grid_thw"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen0_5b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch  # noqa: PLC0415 heavy
    from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: PLC0415 heavy

    torch.set_num_threads(os.cpu_count())

    rows = []
    for name in args.configs.split(","):
        cfg = hf_config(name)
        torch.manual_seed(0)
        ref = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="sdpa").eval()
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(d)
            model, _ = load_pretrained(d)
        for batch in (int(b) for b in args.batches.split(",")):
            ids, mask, pv, grid = prompts(cfg, batch)
            t = {
                "input_ids": torch.as_tensor(ids),
                "attention_mask": torch.as_tensor(mask),
                "pixel_values": torch.as_tensor(pv),
                "image_grid_thw": torch.as_tensor(grid),
            }
            t["mm_token_type_ids"] = (t["input_ids"] == cfg.image_token_id).int()
            out_ref = {}

            def run_hf(ref=ref):
                with torch.no_grad():
                    out_ref["t"] = ref.generate(
                        **t,
                        max_new_tokens=args.new,
                        min_new_tokens=args.new,
                        do_sample=False,
                        eos_token_id=None,
                        pad_token_id=0,
                    )

            out_jax = {}

            def run_jax(model=model):
                out_jax["t"] = jax.block_until_ready(
                    generate(
                        model, ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask, max_new_tokens=args.new
                    )
                )

            s_jax = timed(run_jax, warmup=1, iters=3)
            s_hf = timed(run_hf, warmup=1, iters=2 if name != "tiny" else 3)
            same = np.array_equal(np.asarray(out_jax["t"]), out_ref["t"][:, ids.shape[1] :].numpy())
            new = batch * args.new
            rows.append(
                [
                    name,
                    batch,
                    f"{ids.shape[1]} (+{int(grid[0].prod()) // 4} image)",
                    args.new,
                    f"{new / s_jax:,.0f}",
                    f"{new / s_hf:,.0f}",
                    f"{s_hf / s_jax:.2f}x",
                    "yes" if same else "NO",
                ]
            )
            print(rows[-1], flush=True)
        # the timing closures hold ref and model through their defaults: drop them too before the next config
        del ref, model, run_hf, run_jax
    header = [
        "config",
        "batch",
        "prompt tokens",
        "new tokens",
        "dmx-jax new tok/s",
        "transformers generate new tok/s",
        "speed-up",
        "same tokens",
    ]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_notes:
        record_result(
            "Greedy generation with images vs transformers generate",
            header,
            rows,
            key_columns=2,
            note="fp32. Both greedy, no stop tokens, fixed new-token count; transformers with sdpa attention "
            "and its dynamic KV cache; dmx-jax jitted prefill + while_loop decode over a preallocated cache "
            "(compile excluded by a warm-up call; the same shapes never recompile).",
        )


if __name__ == "__main__":
    main()
