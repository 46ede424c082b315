"""LoRA vs full fine-tuning on the miniature base: the supervised step the default run (`--config tiny_base`)
executes, built by the stage runner's own code (plan_stage / stage_state / the recipe's program), on the same
encoded SFT batches, timed in alternating rounds in one process. Reports ms per step, trained parameters,
train-state bytes (parameters + optimizer state) and the differentiated parameters' gradient bytes.

usage: python -m bench.bench_lora_step [--rank 8] [--alpha 16] [--steps 20] [--rounds 3] [--no-notes]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result
from data_pipelines.pipeline import stack_rows
from dmx_jax.hf import load_pretrained, read_config
from dmx_jax.model.lora import cast_base
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.sharding.rules import path_to_str
from experiments import stages
from experiments.configs import tiny_base
from experiments.datasets import checkpoint_tokenizer, encode_all, synthetic_examples
from experiments.overrides import apply_overrides
from experiments.pipeline import with_lora


def variant(cfg, mesh):
    """(step program, placed train state, trained parameter count) of one config, as the runner builds its SFT
    stage."""
    mcfg = with_lora(read_config(cfg.hf_checkpoint).replace(dtype=cfg.dtype, **cfg.memory.model_overrides()), cfg.lora)
    model, mcfg = load_pretrained(cfg.hf_checkpoint, mesh=mesh, config=mcfg)
    params = nnx.to_pure_dict(nnx.state(model))
    if cfg.lora.rank:
        params = cast_base(params, mcfg.dtype)
    graphdef, _ = nnx.split(model)
    spec, recipe = stages.plan_stage("sft", cfg.sft, graphdef, mcfg, None, params, mesh=mesh, memory=cfg.memory)
    tx, state, shardings = stages.stage_state(spec, recipe, params, mesh, cfg.seed)
    state = jax.device_put(state, shardings)
    program = recipe.programs(tx, recipe.trainable, shardings)
    trainable = stages.stage_trainable(cfg.sft, params)
    paths = jax.tree_util.tree_leaves_with_path(params)
    trained = sum(x.size for p, x in paths if trainable(path_to_str(p)))
    return program, state, trained


def nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args(argv)

    full = apply_overrides(tiny_base(), ["data.train_examples=64"])
    lora = apply_overrides(full, [f"lora.rank={args.rank}", f"lora.alpha={args.alpha}"])
    mesh = make_mesh(MeshConfig(1, 1, 1))
    train_ex, _ = synthetic_examples(full)
    probe = read_config(full.hf_checkpoint).replace(dtype=full.dtype)
    tok = checkpoint_tokenizer(full, probe)
    rows = encode_all(train_ex, tok, probe, full, full.data.max_seq_len, {}, reasoning=False)
    b = full.sft.batch_size
    batches = []
    for i in range(0, len(rows) - b + 1, b):
        arrays, _ = stack_rows(rows[i : i + b])
        batches.append(stages.place_batch({k: v for k, v in arrays.items() if k != "deltas"}, mesh))
    print(f"{len(batches)} batches of {b} SFT rows, seq {full.data.max_seq_len}", flush=True)

    built = {"full": variant(full, mesh), f"lora r{args.rank}": variant(lora, mesh)}
    states = {k: v[1] for k, v in built.items()}
    state_bytes = {k: nbytes(s.params) + nbytes(s.opt_state) for k, s in states.items()}
    times = {k: [] for k in built}
    for k, (program, _, _) in built.items():  # compile + warm up
        states[k], m = program(states[k], batches[0])
        jax.block_until_ready(m["loss"])
    for _ in range(args.rounds):
        for k, (program, _, _) in built.items():
            t0 = time.perf_counter()
            for s in range(args.steps):
                states[k], m = program(states[k], batches[s % len(batches)])
            jax.block_until_ready(m["loss"])
            times[k].append((time.perf_counter() - t0) / args.steps)
    header = ["variant", "ms / step (median of rounds)", "trained params", "params + optimizer state MiB"]
    table = []
    for k, (_, _, trained) in built.items():
        ms = 1e3 * float(np.median(times[k]))
        table.append([k, f"{ms:.1f}", f"{trained:,}", f"{state_bytes[k] / 2**20:.1f}"])
    print(markdown_table(header, table))
    note = (
        f"tiny_base SFT step (batch {b}, seq {full.data.max_seq_len}, tower frozen), {args.rounds} alternating "
        f"rounds of {args.steps} steps; LoRA rank {args.rank}, alpha {args.alpha:g} on the decoder's seven "
        f"projections, base in {full.dtype}"
    )
    if not args.no_notes:
        record_result("LoRA vs full fine-tuning step on the miniature base", header, table, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
