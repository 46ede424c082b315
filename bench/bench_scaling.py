"""SFT train-step time against sequence length, image tokens and mesh shape, with a plot.

Three sweeps of the production train step (make_train_step + sft_loss, AdamW, fp32) on a model preset:
- sequence length 256..4096 at batch 1 with one 224 px image (64 image tokens);
- image tokens 16..1024 (square images 112..896 px) at sequence length 1280, batch 1;
- mesh shape on 8 host devices (a subprocess with --xla_force_host_platform_device_count=8), batch 8, seq 512.
On a 2-core CPU the 8 "devices" share two cores, so the mesh sweep measures sharding overhead, not speed-up.
Each point: median of 3 steps after a compiling one; model TFLOP/s from dmx_jax.perf.flops.

usage: python -m bench.bench_scaling [--preset small] [--max-seq 4096] [--no-notes] [--plot docs/scaling.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import markdown_table, record_result, timed  # noqa: E402
from dmx_jax.model import Qwen25VL, rope_index, vision_inputs  # noqa: E402
from dmx_jax.model.config import PRESETS  # noqa: E402
from dmx_jax.perf.flops import train_flops  # noqa: E402
from dmx_jax.processing import preprocess_images  # noqa: E402
from dmx_jax.sharding import MeshConfig, make_mesh  # noqa: E402
from dmx_jax.training.sft import make_sft_loss  # noqa: E402
from dmx_jax.training.state import init_train_state  # noqa: E402
from dmx_jax.training.step import make_train_step, state_shardings  # noqa: E402
from experiments.stages import place_batch  # noqa: E402

MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (2, 4, 1))


def make_batch(mcfg, batch: int, seq: int, image_side: int) -> dict:
    """batch rows of `seq` tokens, each with one square image (image tokens first after <vision_start>)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (image_side, image_side), dtype=np.uint8)
    f = preprocess_images([img], min_pixels=image_side**2, max_pixels=image_side**2)
    grid, pv = f["image_grid_thw"], f["pixel_values"]
    n_img = int(np.prod(grid)) // mcfg.vision.spatial_merge_size**2
    if n_img + 4 > seq:
        raise ValueError(f"{n_img} image tokens do not fit seq {seq}")
    ids = rng.integers(10, mcfg.text.vocab_size - 10, size=(seq,)).astype(np.int32)
    ids[1], ids[2 : 2 + n_img], ids[2 + n_img] = (
        mcfg.vision_start_token_id,
        mcfg.image_token_id,
        mcfg.vision_end_token_id,
    )
    mask = np.ones(seq, np.int32)
    pos, _ = rope_index(
        ids[None],
        grid,
        mask[None],
        spatial_merge_size=mcfg.vision.spatial_merge_size,
        image_token_id=mcfg.image_token_id,
    )
    vin = vision_inputs(grid, mcfg.vision)
    row = {
        "input_ids": ids,
        "attention_mask": mask,
        "loss_mask": mask,
        "positions": pos[:, 0],
        "pixel_values": pv,
        "vision_inputs": vin,
    }
    return {
        k: (np.stack([v] * batch) if not isinstance(v, dict) else {kk: np.stack([vv] * batch) for kk, vv in v.items()})
        for k, v in row.items()
    } | {"_grid": grid, "_image_tokens": n_img}


def step_time(preset: str, batch: int, seq: int, image_side: int, mesh_shape=(1, 1, 1)) -> dict:
    mcfg = PRESETS[preset]()
    n_dev = int(np.prod(mesh_shape))
    mesh = make_mesh(MeshConfig(*mesh_shape), devices=jax.devices()[:n_dev])
    graphdef, state = nnx.split(Qwen25VL(mcfg, nnx.Rngs(0)))
    tx = optax.adamw(1e-4)
    st = init_train_state(nnx.to_pure_dict(state), tx)
    st = jax.device_put(st, state_shardings(st, mesh))
    step = jax.jit(make_train_step(graphdef, make_sft_loss(), tx), donate_argnums=(0,))
    arrays = make_batch(mcfg, batch, seq, image_side)
    grid, n_img = arrays.pop("_grid"), arrays.pop("_image_tokens")
    placed = place_batch(arrays, mesh)
    holder = [st]

    def run():
        holder[0], m = step(holder[0], placed)
        jax.block_until_ready(m["loss"])

    seconds = timed(run, warmup=1, iters=3)
    flops = train_flops(
        mcfg, text_tokens=batch * seq, seq_len=seq, image_grids=np.repeat(grid, batch, 0).tolist()
    ).total
    return {
        "seq": seq,
        "batch": batch,
        "image_tokens": n_img,
        "mesh": "x".join(map(str, mesh_shape)),
        "step_ms": seconds * 1e3,
        "tokens_per_s": batch * seq / seconds,
        "tflops_per_s": flops / seconds / 1e12,
    }


def _mesh_sweep(preset: str) -> list[dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_scaling", "--mesh-worker", "--preset", preset],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plot(seq_rows, img_rows, mesh_rows, path: Path):
    import matplotlib  # noqa: PLC0415 heavy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 heavy

    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    ax[0].loglog([r["seq"] for r in seq_rows], [r["step_ms"] for r in seq_rows], "o-", base=2)
    ax[0].set(xlabel="sequence length (batch 1, 64 image tokens)", ylabel="train step ms", title="sequence length")
    ax[1].loglog([r["image_tokens"] for r in img_rows], [r["step_ms"] for r in img_rows], "o-", base=2)
    ax[1].set(xlabel="image tokens (x4 vision patches), seq 1280", ylabel="train step ms", title="image size")
    ax[2].bar([r["mesh"] for r in mesh_rows], [r["step_ms"] for r in mesh_rows])
    ax[2].set(
        xlabel="mesh data x fsdp x tensor (8 host devices, 2 cores)",
        ylabel="train step ms",
        title="mesh shape, batch 8, seq 512",
    )
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--max-seq", type=int, default=4096)
    ap.add_argument("--plot", default=str(ROOT / "docs" / "scaling.png"))
    ap.add_argument("--mesh-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    if args.mesh_worker:
        print(json.dumps([step_time(args.preset, 8, 512, 224, m) for m in MESHES]))
        return
    seqs = [s for s in (256, 512, 1024, 2048, 4096) if s <= args.max_seq]
    seq_rows = [step_time(args.preset, 1, s, 224) for s in seqs]
    img_rows = [step_time(args.preset, 1, 1280, side) for side in (112, 224, 448, 896)]
    mesh_rows = _mesh_sweep(args.preset)
    fmt = lambda r: [
        r["mesh"],
        r["batch"],
        r["seq"],
        r["image_tokens"],
        f"{r['step_ms']:,.1f}",
        f"{r['tokens_per_s']:,.0f}",
        f"{r['tflops_per_s']:.4f}",
    ]
    header = ["mesh", "batch", "seq", "image tokens", "step ms", "tokens/s", "model TFLOP/s"]
    rows = [fmt(r) for r in seq_rows + img_rows + mesh_rows]
    table = markdown_table(header, rows)
    print(table)
    _plot(seq_rows, img_rows, mesh_rows, Path(args.plot))
    if not args.no_notes:
        record_result(
            f"Train-step scaling, preset `{args.preset}`",
            header,
            rows,
            key_columns=4,
            note="fp32, AdamW. Plot: "
            f"`{Path(args.plot).relative_to(ROOT) if Path(args.plot).is_relative_to(ROOT) else args.plot}`. "
            "Mesh rows run 8 host devices on the same 2 cores: they show what sharding costs, not what it "
            "gains.",
        )


if __name__ == "__main__":
    main()
