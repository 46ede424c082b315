"""Is the synthetic benchmark learnable from the pixels? A linear probe trained jointly with dmx-jax's vision
tower (the `small` preset's 4-block windowed ViT + merger, from scratch, mean-pooled) on the 14 CheXpert
finding labels of rendered studies, for about a CPU-minute; per-finding AUROC on held-out test studies.

Chance is AUROC 0.5. Labels: CheXpert columns of the generator's truth, 1 = present, anything else = absent
("No Finding" included as its own column).

usage: python -m bench.bench_learnability [--train 4000] [--test 1000] [--steps 1500] [--no-notes]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result
from data_pipelines.schema import CHEXPERT_LABELS
from data_pipelines.synthetic import SyntheticConfig, study
from dmx_jax.model import vision_inputs
from dmx_jax.model.config import small
from dmx_jax.model.vision import VisionEncoder
from dmx_jax.processing import preprocess_images
from dmx_jax.training.align import label_auc


def studies(split: str, n: int, scfg):
    out = [study(split, i, scfg) for i in range(n)]
    proc = preprocess_images([s.image for s in out], min_pixels=56 * 56, max_pixels=scfg.image_size**2)
    grid = proc["image_grid_thw"]
    if len({tuple(g) for g in grid.tolist()}) != 1:
        raise ValueError("studies rendered at different sizes")
    pixels = proc["pixel_values"].reshape(n, -1, proc["pixel_values"].shape[-1])
    labels = np.stack([s.labels for s in out]) == 1.0
    return pixels, labels, grid[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()

    scfg = SyntheticConfig(image_size=128)
    t0 = time.perf_counter()
    x_train, y_train, grid = studies("train", args.train, scfg)
    x_test, y_test, _ = studies("test", args.test, scfg)
    t_data = time.perf_counter() - t0
    vcfg = small().vision
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid[None], vcfg))
    encoder = VisionEncoder(vcfg, nnx.Rngs(0))
    graphdef, enc_params = nnx.split(encoder)
    params = {
        "encoder": nnx.to_pure_dict(enc_params),
        "head": {"w": jnp.zeros((vcfg.out_hidden_size, y_train.shape[1])), "b": jnp.zeros(y_train.shape[1])},
    }

    def logits_fn(p, pixels):  # pixels [B, P, F] -> [B, 14]
        enc = nnx.merge(graphdef, p["encoder"])
        feats = jax.vmap(lambda pv: enc(pv, vin))(pixels).mean(axis=1)
        return feats @ p["head"]["w"] + p["head"]["b"]

    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-3, 50, args.steps), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(p, o, pixels, labels):
        loss, g = jax.value_and_grad(lambda q: optax.sigmoid_binary_cross_entropy(logits_fn(q, pixels), labels).mean())(
            p
        )
        upd, o = tx.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        idx = rng.integers(0, args.train, args.batch)
        params, opt, loss = step(params, opt, x_train[idx], y_train[idx].astype(np.float32))
    float(loss)
    t_train = time.perf_counter() - t0
    score = np.concatenate(
        [np.asarray(jax.jit(logits_fn)(params, x_test[i : i + 100])) for i in range(0, args.test, 100)]
    )

    per_label = label_auc(score, y_test)
    rows, aucs = [], {}
    for k, name in enumerate(CHEXPERT_LABELS):
        n_pos = int(y_test[:, k].sum())
        if n_pos < 10 or n_pos > args.test - 10:
            continue
        a = float(per_label[k])
        aucs[name] = a
        rows.append([name, n_pos, f"{a:.3f}"])
    findings = [a for name, a in aucs.items() if name != "No Finding"]
    rows.append([f"mean over {len(findings)} findings", "", f"{np.mean(findings):.3f}"])
    head = (
        f"vision tower of `small` + linear head, from scratch, {args.steps} steps x batch {args.batch} on "
        f"{args.train} studies ({t_train:.0f} s train, {t_data:.0f} s to render); held-out {args.test} test "
        f"studies; chance AUROC 0.5; final train BCE {float(loss):.3f}"
    )
    header = ["finding", "held-out positives", "AUROC"]
    table = markdown_table(header, rows)
    print(head + "\n" + table)
    if not args.no_notes:
        record_result("Synthetic benchmark learnability (finding labels from pixels)", header, rows, note=head + ".")


if __name__ == "__main__":
    main()
