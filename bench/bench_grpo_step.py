"""One GRPO step broken down into rollout, reward, log-prob recomputation (policy + reference) and update.

Runs the production GRPO path (`experiments.stages.run_grpo`: jitted sampler, jitted byte-level reward,
jitted log-probs and update) on the default experiment's data and model shape, from random weights (an
untrained policy rarely stops early, so rollouts run to max_new_tokens: the rollout share is an upper bound).
The first step (compilation) is left out; the table is the median over the rest.

usage: python -m bench.bench_grpo_step [--steps 5] [--prompts 4] [--group 8] [--max-new-tokens 192] [--no-notes]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import append_notes, markdown_table  # noqa: E402

PHASES = ("rollout", "reward", "logprob", "update")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--studies", type=int, default=256, help="synthetic studies rendered for the prompt pool")
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    from flax import nnx

    from dmx_jax.model import Qwen25VL
    from dmx_jax.sharding import MeshConfig, make_mesh
    from dmx_jax.training.loop import MetricsWriter
    from experiments.configs import tiny
    from experiments.datasets import synthetic_data
    from experiments.stages import run_grpo

    base = tiny()
    cfg = dataclasses.replace(
        base, data=dataclasses.replace(base.data, train_examples=args.studies),
        rl=dataclasses.replace(base.rl, steps=args.steps, save_every=10 ** 6, prompts_per_step=args.prompts,
                               algo=dataclasses.replace(base.rl.algo, group_size=args.group,
                                                        max_new_tokens=args.max_new_tokens)))
    work = Path(tempfile.mkdtemp(prefix="bench_grpo_"))
    data = synthetic_data(cfg, work)
    graphdef, state = nnx.split(Qwen25VL(data.model_cfg, nnx.Rngs(0)))
    mesh = make_mesh(MeshConfig(1, 1, 1))
    writer = MetricsWriter(work / "metrics.jsonl")
    run_grpo(work / "grpo", graphdef, nnx.to_pure_dict(state), data.rl, cfg.rl, data.tokenizer, seed=0, mesh=mesh,
             writer=writer, config_json={}, vocab_size=data.model_cfg.text.vocab_size)
    writer.close()
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time/rollout_s" in r][1:]
    med = {p: float(np.median([r[f"time/{p}_s"] for r in records])) for p in PHASES}
    step_s = float(np.median([r["step_time_s"] for r in records]))
    other = max(step_s - sum(med.values()), 0.0)
    rows = [[p, f"{med[p] * 1e3:,.1f}", f"{med[p] / step_s:.1%}"] for p in PHASES]
    rows.append(["host (metrics, data, transfers)", f"{other * 1e3:,.1f}", f"{other / step_s:.1%}"])
    rows.append(["whole step", f"{step_s * 1e3:,.1f}", "100%"])
    n = args.prompts * args.group
    table = markdown_table(["phase", "median ms", "share of step"], rows)
    head = (f"model `small` (random weights), {args.prompts} prompts x G={args.group} = {n} rollouts of "
            f"{args.max_new_tokens} new tokens, reward preset `{cfg.rl.reward_preset}`, median of "
            f"{len(records)} steps after the compiling one")
    print(head + "\n" + table)
    if not args.no_notes:
        append_notes("Benchmark: GRPO step breakdown", head + ".\n\n" + table)


if __name__ == "__main__":
    main()
