"""Can the miniature's decoder join a named finding to the image? Yes/no presence questions ("Is there X in this
image?", balanced per finding) over a set of findings, trained with the project's SFT stage on top of the
alignment stage (vision tower frozen), scored on held-out studies with real and with swapped images.

One finding is a first-order cue (the answer depends on the image alone); several findings need the question's
finding name joined to the image. The decoder's answer is the candidate (yes / no) with the lower teacher-forced
NLL. Swapped: each row gets another row's image (same batch, rolled by 7).

usage: python -m bench.bench_binding --run-dir DIR [--sets "Cardiomegaly;all"] [--steps 400] [--no-notes]
DIR holds (or gets, --align-steps) an alignment stage of the default config; tokenizer and data are the default
run's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, peak_rss_gb, record_result
from data_pipelines.pipeline import stack_rows
from data_pipelines.synthetic import SyntheticConfig, examples
from data_pipelines.synthetic.vqa import FINDING_NAMES, _with_article, name_phrase
from dmx_jax.eval.paired import paired_difference
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.loop import MetricsWriter
from dmx_jax.training.loss import shift_targets, token_losses
from dmx_jax.training.optim import OptimConfig
from experiments.configs import tiny
from experiments.datasets import encode_all
from experiments.pipeline import alignment_entry, initial_model, run_entry
from experiments.stages import RunContext, StageSpec, plan_stage, run_stage


def presence_examples(split: str, start: int, n: int, findings: tuple[str, ...], seed: int) -> list:
    """Yes/no presence Examples on the images of studies start..start+n of a split, every positive kept and
    negatives subsampled to the positives' count per finding (truth: the study's CheXpert labels)."""
    scfg = SyntheticConfig(image_size=128, seed=0)
    studies = [examples(split, start + i, scfg, task="classification") for i in range(n)]
    labels = np.stack([np.asarray(s.labels)[1:] == 1 for s in studies])  # [n, 13], "No Finding" dropped
    rng = np.random.default_rng(seed)
    out = []
    for f in findings:
        k = FINDING_NAMES.index(f)
        pos = labels[:, k]
        keep_neg = rng.random(n) < pos.sum() / max(1, (~pos).sum())
        for i in np.flatnonzero(pos | keep_neg):
            s = studies[i]
            question = f"Is there {_with_article(name_phrase(f))} in this image?"
            out.append(
                dataclasses.replace(
                    s,
                    task="vqa",
                    prompt=question,
                    target="yes" if pos[i] else "no",
                    example_id=f"{s.example_id}/{f}",
                    meta={**s.meta, "finding": f},
                )
            )
    return out


def make_row_nll(graphdef):
    """Jitted (params, batch) -> [B] summed answer NLL per row (teacher forced, answer tokens only)."""

    @jax.jit
    def row_nll(params, b):
        m = nnx.merge(graphdef, params)
        h, _ = m.hidden_states(
            b["input_ids"], b["positions"].swapaxes(0, 1), b["attention_mask"], b["pixel_values"], b["vision_inputs"]
        )
        targets, w = shift_targets(b["input_ids"], b["loss_mask"])
        return (token_losses(m.logits(h), targets) * w).sum(-1)

    return row_nll


def answer_nll(row_nll, params, rows: list[dict], swap: bool, batch: int = 32) -> np.ndarray:
    """[len(rows)] answer NLL per row in batches of one shape (images rolled by 7 within each batch when swap)."""
    out = []
    for k in range(0, len(rows), batch):
        chunk = rows[k : k + batch]
        chunk = chunk + rows[: batch - len(chunk)]  # one compiled shape; extra rows dropped below
        a, _ = stack_rows(chunk)
        a = {key: v for key, v in a.items() if key != "deltas"}
        if swap:
            a["pixel_values"] = np.roll(a["pixel_values"], 7, axis=0)
        out.append(np.asarray(row_nll(params, jax.tree.map(jnp.asarray, a))))
    return np.concatenate(out)[: len(rows)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--sets", default="Cardiomegaly;all", help="';'-separated finding sets, ',' within a set")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--align-steps", type=int, default=600, help="alignment steps when DIR has no alignment stage")
    ap.add_argument("--train-studies", type=int, default=4000)
    ap.add_argument("--test-studies", type=int, default=1200)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()

    cfg = tiny()
    cfg = dataclasses.replace(cfg, align=dataclasses.replace(cfg.align, steps=args.align_steps))
    args.run_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(MeshConfig(1, 1, 1))
    graphdef, params0, data, mcfg = initial_model(cfg, mesh, args.run_dir)
    out_dir = args.run_dir / "bench_binding"
    ctx = RunContext(mesh=mesh, writer=MetricsWriter(out_dir / "metrics.jsonl"), run_config={}, seed=0)
    align = alignment_entry(cfg, data, graphdef, params0, args.run_dir, ctx.writer)
    params0 = jax.device_get(run_entry(align, params0, args.run_dir, ctx, True)[0])  # host copy:
    # each set's stage donates the parameters it starts from
    tok, rows_out, row_nll = data.tokenizer, [], make_row_nll(graphdef)
    for set_spec in args.sets.split(";"):
        findings = FINDING_NAMES if set_spec == "all" else tuple(set_spec.split(","))
        unknown = [f for f in findings if f not in FINDING_NAMES]
        if unknown:
            raise SystemExit(f"bench_binding --sets: unknown findings {unknown}; choose from {FINDING_NAMES}")
        t0 = time.perf_counter()
        train = presence_examples("train", 10_000, args.train_studies, findings, seed=0)
        test = presence_examples("test", 700, args.test_studies, findings, seed=1)
        enc = lambda exs: encode_all(exs, tok, mcfg, cfg, 96, {}, reasoning=False)
        train_rows = enc(train)
        cand = {a: enc([dataclasses.replace(e, target=a) for e in test]) for a in ("yes", "no")}
        tag = "all 13" if set_spec == "all" else set_spec
        spec = StageSpec(
            f"binding {tag}",
            args.steps,
            args.batch,
            OptimConfig(learning_rate=args.lr, warmup_steps=20, total_steps=args.steps),
            10**9,
        )
        _, recipe = plan_stage(
            "sft", dataclasses.replace(cfg.sft, vision_lr=0.0), graphdef, mcfg, tok, params0, mesh=mesh
        )
        params = run_stage(
            spec,
            recipe,
            out_dir / tag.replace(" ", "_").replace(",", "+"),
            jax.tree.map(jnp.asarray, params0),
            train_rows,
            ctx,
        )
        truth = np.array([e.target == "yes" for e in test])
        finding = np.array([e.meta["finding"] for e in test])
        correct = {}
        for swap in (False, True):
            yes, no = (answer_nll(row_nll, params, cand[a], swap) for a in ("yes", "no"))
            correct[swap] = ((yes < no) == truth).astype(np.float64)
        diff = paired_difference(correct[True], correct[False])
        per = sorted(((float(correct[False][finding == f].mean()), f) for f in findings), reverse=True)
        best = ", ".join(f"{f} {a:.2f}" for a, f in per[:3])
        rows_out.append(
            [
                tag,
                len(train_rows),
                f"{args.steps} x {args.batch}",
                len(test),
                f"{correct[False].mean():.3f}",
                f"{correct[True].mean():.3f}",
                f"{diff['mean']:.3f} [{diff['ci'][0]:.3f}, {diff['ci'][1]:.3f}]",
                best,
                f"{time.perf_counter() - t0:.0f}",
            ]
        )
        print(rows_out[-1], flush=True)
    header = [
        "findings asked",
        "train rows",
        "steps x batch",
        "held-out questions",
        "accuracy",
        "images swapped",
        "drop [95% CI]",
        "best findings (accuracy)",
        "seconds",
    ]
    note = (
        f"`small` after an alignment stage of {cfg.align.steps} steps, tower frozen, SFT lr {args.lr}; "
        f"answer = lower teacher-forced NLL of yes / no; peak RSS {peak_rss_gb():.1f} GB"
    )
    print(note + "\n" + markdown_table(header, rows_out))
    if not args.no_notes:
        record_result("Binding a named finding to the image (presence questions)", header, rows_out, note=note + ".")


if __name__ == "__main__":
    main()
