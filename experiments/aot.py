"""Ahead-of-time TPU compile check: does every step of a preset fit a slice, before the slice is rented?

    python -m experiments.aot --config qwen2_5_vl_7b --topology v5p-8 [--stage sft|cold_start|grpo|eval|all]
                              [--set key=value ...] [--json]

Compiles the programs the stage runner itself runs, built by the same code (SFT / cold start: the recipe of
`experiments.stages.plan_stage`, its optimizer and `state_shardings`; GRPO: `experiments.stage_programs.grpo_programs`,
the sampler (prefill + decode loop), the policy and reference log-prob passes and the update that GRPOLearner
runs; tests/test_program_identity.py lowers both and compares them), feeds them abstract inputs
(`jax.ShapeDtypeStruct` with `NamedSharding`s on a mesh over the slice's abstract TPU devices) and compiles them
with libtpu on the CPU.
Nothing is allocated. Per step it prints XLA's per-chip memory (arguments, outputs, aliases, temporaries),
the buffers that stay resident between steps (`resident`: the optimizer state during GRPO sampling, the
reference parameters), the peak = arguments + outputs - aliases + temporaries + resident, whether it fits HBM
and the headroom, then the analytic FLOPs of `dmx_jax.perf.flops` and a roofline step time and MFU:
time = max(FLOPs / (chips x peak bf16 FLOP/s), HBM bytes per chip / bandwidth), FLOPs executed (remat adds one
forward), decode steps bandwidth-bound on the bf16 weights and the KV cache. Memory figures are GiB.

The slice table, abstract inputs and the one-step compile live in `experiments.tpu_compile`, the plan and
the abstract train state in `experiments.aot_plan`, the GRPO rows in `experiments.aot_grpo`.
libtpu: `pip install "jax[tpu]==<installed jax>"` (the `tpu` extra); works with JAX_PLATFORMS=cpu.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes on this host may hold libtpu's lock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh

from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import PRESETS as MODEL_PRESETS
from dmx_jax.model.lora import adapters_of, cast_base
from dmx_jax.perf.flops import train_flops
from dmx_jax.sharding.rules import tree_shardings
from dmx_jax.training.grpo import initial_aux
from experiments.aot_eval import eval_rows
from experiments.aot_grpo import (
    _logprob_rows,
    _relayout_row,
    _reward_row,
    _rollout_row,
    _update_row,
    grpo_step_summary,
)
from experiments.aot_plan import Plan, _image_grid, _row, _state, _weight_read_bytes
from experiments.configs import PRESETS
from experiments.datasets import patch_budget
from experiments.overrides import apply_overrides
from experiments.pipeline import with_lora
from experiments.stage_programs import decode_shardings, grpo_programs
from experiments.stages import grpo_updates_per_step, plan_stage, stage_optimizer, stage_trainable
from experiments.tpu_compile import (
    AotError,
    Row,
    compile_row,
    image_batch,
    per_chip_bytes,
    resolve_topology,
    roofline,
    text_batch,
    topology_devices,
)
from experiments.validate import validate

STAGES = ("sft", "cold_start", "grpo", "eval")


# ------------------------------------------------------------------------------------------------ plan
def make_plan(cfg, topology: str, model_cfg=None) -> Plan:
    """The preset's abstract model on the slice's mesh. model_cfg: the model config the runner builds (default:
    the preset's, with the run's dtype, memory overrides and LoRA), e.g. a from-scratch run's tokenizer vocab."""
    label, topo, chip = resolve_topology(topology)
    devices = topology_devices(topo)
    sizes = cfg.mesh.resolve(len(devices))
    mesh = Mesh(np.asarray(devices).reshape(sizes), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    mcfg = model_cfg
    if mcfg is None:
        if cfg.model not in MODEL_PRESETS:
            raise AotError(f"model preset {cfg.model!r} is unknown (have {', '.join(MODEL_PRESETS)})")
        mcfg = with_lora(MODEL_PRESETS[cfg.model]().replace(dtype=cfg.dtype, **cfg.memory.model_overrides()), cfg.lora)
    abstract = nnx.eval_shape(lambda: Qwen25VL(mcfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    sh = tree_shardings(params, mesh)
    if mcfg.text.lora.rank:  # the frozen base in the compute dtype, adapters fp32 (as initial_model)
        params = jax.eval_shape(lambda p: cast_base(p, mcfg.dtype), params)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, sh)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return Plan(
        cfg, mcfg, mesh, chip, label, patch_budget(cfg), graphdef, params, n_params, stop_ids=(mcfg.eos_token_id,)
    )


def supervised_program(plan: Plan, stage: str):
    """(the runner's own step program for `stage`, its abstract (state, batch) inputs): the recipe, optimizer,
    trainable parameters and state shardings come from experiments.stages (plan_stage, stage_state's layout),
    as the stage runner builds them."""
    cfg = plan.cfg
    st = cfg.sft if stage == "sft" else cfg.cold_start
    seq = cfg.data.max_seq_len if stage == "sft" else cfg.data.reasoning_seq_len
    spec, recipe = plan_stage(stage, st, plan.graphdef, plan.mcfg, None, plan.params, mesh=plan.mesh, memory=cfg.memory)
    tx = recipe.make_tx(spec.optim)
    state, state_sh = _state(plan, tx, recipe.initial_aux)
    program = recipe.programs(tx, recipe.trainable, state_sh)
    b = spec.batch_size
    batch = {**text_batch(b, seq, plan.mesh), **image_batch(plan.mcfg, b, plan.patches, plan.mesh)}
    return program, (state, batch)


def supervised_rows(plan: Plan, stage: str) -> list[Row]:
    st = plan.cfg.sft if stage == "sft" else plan.cfg.cold_start
    program, args = supervised_program(plan, stage)
    b, seq = args[1]["input_ids"].shape
    row = _row(
        plan,
        stage,
        "train",
        b,
        seq,
        f"[{b},{seq}] + {plan.patches} patches/row"
        + (f", accum {st.optim.grad_accum}" if st.optim.grad_accum > 1 else ""),
    )
    compile_row(row, program.jitted, args, mesh=plan.mesh)
    grid = _image_grid(plan)
    f = train_flops(plan.mcfg, text_tokens=b * seq, seq_len=seq, image_grids=[grid] * b).total
    executed = f * (4 / 3 if plan.mcfg.remat != "none" else 1.0)
    passes = 4 if plan.mcfg.remat != "none" else 3
    hbm = _weight_read_bytes(plan) * passes * st.optim.grad_accum + 28.0 * plan.n_params / plan.mesh.size
    return [roofline(row, plan.chip, flops=f, executed=executed, hbm_bytes_per_chip=hbm)]


GRPO_STEPS = ("relayout", "rollout", "logprob", "ref_logp", "update", "reward")


def grpo_programs_of(plan: Plan):
    """(the GRPO stage's programs as the runner builds them (experiments.stage_programs.grpo_programs with the stage's
    optimizer and trainable parameters), its optimizer, abstract train state and state shardings)."""
    rl = plan.cfg.rl
    tx = stage_optimizer(rl, plan.params, grpo_updates_per_step(rl) if rl.lr_schedule_unit == "rollout" else 1)(
        rl.optim
    )
    state, state_sh = _state(plan, tx, initial_aux(rl.algo))
    mem = plan.cfg.memory
    programs = grpo_programs(
        plan.graphdef,
        rl,
        plan.mcfg,
        mem,
        plan.mesh,
        tx=tx,
        trainable=stage_trainable(rl, plan.params),
        shardings=state_sh,
        stop_ids=plan.stop_ids,
        pad_id=plan.mcfg.pad_token_id,
        decode=decode_shardings(plan.params, plan.mesh, mem),
    )
    return programs, tx, state, state_sh


def grpo_rows(plan: Plan, steps=GRPO_STEPS) -> list[Row]:
    cfg, mcfg = plan.cfg, plan.mcfg
    rl, algo, mem = cfg.rl, cfg.rl.algo, cfg.memory
    g, tn, t = algo.group_size, algo.max_new_tokens, cfg.data.reasoning_prompt_len
    n = rl.prompts_per_step * g
    programs, _, state, _ = grpo_programs_of(plan)
    opt_bytes = per_chip_bytes(state.opt_state)
    lora = bool(mcfg.text.lora.rank)
    ref_dtype = jnp.dtype(mem.ref_dtype) if mem.ref_dtype and not lora else None
    ref = (
        plan.params
        if ref_dtype is None
        else jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, ref_dtype, sharding=x.sharding), plan.params)
    )
    if lora:  # the reference is the policy's base with a copy of the starting adapters: adapter bytes only
        ref_bytes = per_chip_bytes(adapters_of(plan.params)) if algo.needs_reference else 0
    else:
        ref_bytes = 0 if (not algo.kl_coef or mem.ref_offload) else per_chip_bytes(ref)
    rows = []
    grid = _image_grid(plan)
    kv_bytes_row = (
        2
        * mcfg.text.num_hidden_layers
        * mcfg.text.num_key_value_heads
        * mcfg.text.head_dim
        * jnp.dtype(mem.kv_cache_dtype or mcfg.dtype).itemsize
    )

    if "relayout" in steps and programs.relayout is not None:
        rows += _relayout_row(plan, programs, opt_bytes + ref_bytes)
    if "rollout" in steps:
        rows += _rollout_row(plan, programs, algo, mem, n, t, tn, grid, kv_bytes_row, opt_bytes + ref_bytes)
    if "logprob" in steps or "ref_logp" in steps:
        rows += _logprob_rows(
            plan, programs, algo, n, t, tn, grid, ref, ref_dtype, opt_bytes + ref_bytes, per_chip_bytes(state), steps
        )
    if "update" in steps:
        rows += _update_row(plan, programs, algo, rl, state, n, g, t, tn, grid, ref_bytes)
    if "reward" in steps:
        rows += _reward_row(plan, rl, n, tn, opt_bytes + per_chip_bytes(state.params) + ref_bytes)
    return rows


def run(cfg, topology: str, stages=STAGES, emit: Callable[[Row], None] | None = None) -> list[Row]:
    plan = make_plan(cfg, topology)
    rows: list[Row] = []
    for stage in stages:
        new = (
            grpo_rows(plan) if stage == "grpo" else eval_rows(plan) if stage == "eval" else supervised_rows(plan, stage)
        )
        for r in new:
            if emit:
                emit(r)
        rows += new
    return rows


def row_json(row: Row) -> str:
    return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(row).items()})


def markdown(rows: list[Row]) -> str:
    head = (
        "| stage | step | topology | peak / HBM GiB | headroom | params | global batch | shapes | "
        "TFLOP | roofline s | MFU |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        mem = "error" if r.peak_gb is None else f"{r.peak_gb:.1f} / {r.hbm_gb:.1f}" + ("" if r.fits else " (no fit)")
        lines.append(
            f"| {r.stage} | {r.step} | {r.topology} | {mem} | "
            f"{'' if r.headroom is None else f'{100 * r.headroom:.0f}%'} | {r.params / 1e9:.2f}B | "
            f"{r.global_batch} | {r.shapes} | {r.flops / 1e12:.0f} | "
            f"{'' if r.step_time_s is None else f'{r.step_time_s:.2f}'} | "
            f"{'' if r.mfu is None else f'{100 * r.mfu:.0f}%'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="qwen2_5_vl_7b", help="experiment preset (experiments.configs.PRESETS)")
    ap.add_argument("--topology", default="v5p-8", help="slice name(s) or libtpu topology, comma-separated")
    ap.add_argument("--stage", default="all", choices=STAGES + ("all",))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true", help="one JSON object per step")
    ap.add_argument("--markdown", action="store_true", help="also print a markdown table at the end")
    args = ap.parse_args(argv)
    try:
        if args.config not in PRESETS:
            raise AotError(f"unknown config {args.config!r} (have {', '.join(PRESETS)})")
        try:
            cfg = validate(apply_overrides(PRESETS[args.config](), args.overrides))
        except ValueError as e:
            raise AotError(str(e)) from None
        topologies = [t.strip() for t in args.topology.split(",") if t.strip()]
        for t in topologies:
            resolve_topology(t)
        stages = STAGES if args.stage == "all" else (args.stage,)
        emit = (lambda r: print(row_json(r), flush=True)) if args.json else (lambda r: print(r.text(), flush=True))
        rows = []
        for t in topologies:
            try:
                rows += run(cfg, t, stages, emit)
            except ValueError as e:  # e.g. a mesh that does not divide the slice
                raise AotError(f"{t}: {e}") from None
    except AotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(rows))
    summary = grpo_step_summary(rows, cfg.rl.algo, cfg.rl.prompts_per_step)
    if summary and not args.json:
        print(summary)
    bad = [r for r in rows if not r.fits]
    for r in bad:
        why = (
            r.error
            if r.peak_gb is None
            else f"needs {r.peak_gb:.1f} GiB of {r.hbm_gb:.1f} GiB ({r.peak_gb - r.hbm_gb:+.1f} GiB)"
        )
        print(f"does not fit: {r.stage}/{r.step} on {r.topology}: {why}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
