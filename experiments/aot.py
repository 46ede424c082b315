"""Ahead-of-time TPU compile check: does every step of a preset fit a slice, before the slice is rented?

    python -m experiments.aot --config qwen2_5_vl_7b --topology v5p-8 [--stage sft|cold_start|grpo|all]
                              [--set key=value ...] [--json]

Builds the real jitted steps of each stage with the library functions the stage runner uses (SFT / cold start:
`make_train_step` + `make_sft_loss(memory.loss_chunk)` with `state_shardings`; GRPO: the rollout through
`make_sampler` (prefill + decode loop), the completion log-prob pass (`completion_logprobs`, policy and
reference) and the update (`make_policy_update`)), feeds them abstract inputs (`jax.ShapeDtypeStruct` with
`NamedSharding`s on a mesh over the slice's abstract TPU devices) and compiles them with libtpu on the CPU.
Nothing is allocated. Per step it prints XLA's per-chip memory (arguments, outputs, aliases, temporaries),
the buffers that stay resident between steps (`resident`: the optimizer state during GRPO sampling, the
reference parameters), the peak = arguments + outputs - aliases + temporaries + resident, whether it fits HBM
and the headroom, then the analytic FLOPs of `dmx_jax.perf.flops` and a roofline step time and MFU:
time = max(FLOPs / (chips x peak bf16 FLOP/s), HBM bytes per chip / bandwidth), FLOPs executed (remat adds one
forward), decode steps bandwidth-bound on the bf16 weights and the KV cache. Memory figures are GiB.

The slice table, abstract inputs and the one-step compile live in `experiments.tpu_compile`.
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
from typing import Any

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other processes on this host may hold libtpu's lock

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.tpu_compile import (
    AotError,
    Chip,
    Row,
    batch_leaf,
    compile_row,
    image_batch,
    per_chip_bytes,
    resolve_topology,
    roofline,
    text_batch,
    topology_devices,
)

STAGES = ("sft", "cold_start", "grpo")


# ------------------------------------------------------------------------------------------------ plan
@dataclasses.dataclass
class Plan:
    cfg: Any  # ExperimentConfig
    mcfg: Any  # ModelConfig with memory overrides and compute dtype
    mesh: Mesh
    chip: Chip
    label: str
    patches: int
    graphdef: Any
    params: Any  # abstract, sharded
    n_params: int


def make_plan(cfg, topology: str) -> Plan:
    from flax import nnx

    from dmx_jax.model import Qwen25VL
    from dmx_jax.model.config import PRESETS as MODEL_PRESETS
    from dmx_jax.sharding.rules import tree_shardings
    from experiments.datasets import patch_budget

    label, topo, chip = resolve_topology(topology)
    devices = topology_devices(topo)
    sizes = cfg.mesh.resolve(len(devices))
    mesh = Mesh(np.asarray(devices).reshape(sizes), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    if cfg.model not in MODEL_PRESETS:
        raise AotError(f"model preset {cfg.model!r} is unknown (have {', '.join(MODEL_PRESETS)})")
    mcfg = MODEL_PRESETS[cfg.model]().replace(dtype=cfg.dtype, **cfg.memory.model_overrides())
    if cfg.lora.rank:
        from experiments.pipeline import with_lora

        mcfg = with_lora(mcfg, cfg.lora)
    abstract = nnx.eval_shape(lambda: Qwen25VL(mcfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    sh = tree_shardings(params, mesh)
    if cfg.lora.rank:  # the frozen base in the compute dtype, adapters fp32 (as initial_model)
        from dmx_jax.model.lora import cast_base

        params = jax.eval_shape(lambda p: cast_base(p, mcfg.dtype), params)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, sh)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    return Plan(cfg, mcfg, mesh, chip, label, patch_budget(cfg), graphdef, params, n_params)


def _state(plan: Plan, stage_cfg, updates_per_step: int = 1):
    """(optimizer, abstract train state, its shardings) of a stage, the optimizer built as the runner builds it
    (frozen parts and LoRA: no state for what does not train)."""
    from dmx_jax.training.state import TrainState
    from dmx_jax.training.step import state_shardings
    from experiments.stages import stage_optimizer

    tx = stage_optimizer(stage_cfg, plan.params, updates_per_step)(stage_cfg.optim)
    opt = jax.eval_shape(tx.init, plan.params)
    rep = NamedSharding(plan.mesh, P())
    state = TrainState(
        plan.params,
        opt,
        jax.ShapeDtypeStruct((), jnp.int32, sharding=rep),
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
    )
    sh = state_shardings(state, plan.mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, sh)
    return tx, state, sh


def _row(plan: Plan, stage: str, step: str, batch: int, seq: int, shapes: str) -> Row:
    return Row(stage, step, plan.label, plan.mesh.size, plan.chip.hbm_gib, plan.n_params, batch, seq, shapes)


def _image_grid(plan: Plan) -> list[int]:
    """The most square grid within the patch budget (for the FLOP count)."""
    m = plan.mcfg.vision.spatial_merge_size
    side = int(math.isqrt(plan.patches // (m * m)))
    return [1, side * m, (plan.patches // (m * m) // side) * m]


def _weight_read_bytes(plan: Plan) -> float:
    """bf16 weights every chip reads per pass (after FSDP gathers: the full model)."""
    return 2.0 * plan.n_params


def supervised_rows(plan: Plan, stage: str) -> list[Row]:
    from dmx_jax.perf.flops import train_flops
    from dmx_jax.training.sft import make_sft_loss
    from dmx_jax.training.step import make_train_step
    from experiments.stages import stage_trainable

    cfg = plan.cfg
    st = cfg.sft if stage == "sft" else cfg.cold_start
    seq = cfg.data.max_seq_len if stage == "sft" else cfg.data.reasoning_seq_len
    b = st.batch_size
    tx, state, state_sh = _state(plan, st)
    batch = {**text_batch(b, seq, plan.mesh), **image_batch(plan.mcfg, b, plan.patches, plan.mesh)}
    batch_sh = jax.tree.map(lambda x: x.sharding, batch)
    step = make_train_step(
        plan.graphdef,
        make_sft_loss(cfg.memory.loss_chunk),
        tx,
        grad_accum=st.optim.grad_accum,
        compute_dtype=jnp.dtype(plan.mcfg.dtype),
        trainable=stage_trainable(st, plan.params),
    )
    row = _row(
        plan,
        stage,
        "train",
        b,
        seq,
        f"[{b},{seq}] + {plan.patches} patches/row"
        + (f", accum {st.optim.grad_accum}" if st.optim.grad_accum > 1 else ""),
    )
    compile_row(
        row,
        step,
        (state, batch),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, None),
        donate=(0,),
        mesh=plan.mesh,
    )
    grid = _image_grid(plan)
    f = train_flops(plan.mcfg, text_tokens=b * seq, seq_len=seq, image_grids=[grid] * b).total
    executed = f * (4 / 3 if plan.mcfg.remat != "none" else 1.0)
    passes = 4 if plan.mcfg.remat != "none" else 3
    hbm = _weight_read_bytes(plan) * passes * st.optim.grad_accum + 28.0 * plan.n_params / plan.mesh.size
    return [roofline(row, plan.chip, flops=f, executed=executed, hbm_bytes_per_chip=hbm)]


GRPO_STEPS = ("rollout", "logprob", "ref_logp", "update", "reward")


def grpo_rows(plan: Plan, steps=GRPO_STEPS) -> list[Row]:
    cfg, mcfg = plan.cfg, plan.mcfg
    rl, algo, mem = cfg.rl, cfg.rl.algo, cfg.memory
    g, tn, t = algo.group_size, algo.max_new_tokens, cfg.data.reasoning_prompt_len
    n = rl.prompts_per_step * g
    from experiments.stages import grpo_updates_per_step

    tx, state, state_sh = _state(plan, rl, grpo_updates_per_step(rl) if rl.lr_schedule_unit == "rollout" else 1)
    opt_bytes = per_chip_bytes(state.opt_state)
    lora = bool(cfg.lora.rank)  # the reference is the base with the adapters off: no copy, no second program
    ref_dtype = jnp.dtype(mem.ref_dtype) if mem.ref_dtype and not lora else None
    ref = (
        plan.params
        if ref_dtype is None
        else jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, ref_dtype, sharding=x.sharding), plan.params)
    )
    ref_bytes = 0 if (not algo.kl_coef or mem.ref_offload or lora) else per_chip_bytes(ref)
    rows = []
    grid = _image_grid(plan)
    kv_bytes_row = (
        2
        * mcfg.text.num_hidden_layers
        * mcfg.text.num_key_value_heads
        * mcfg.text.head_dim
        * jnp.dtype(mem.kv_cache_dtype or mcfg.dtype).itemsize
    )

    if "rollout" in steps:
        rows += _rollout_row(plan, algo, mem, rl, n, t, tn, grid, kv_bytes_row, opt_bytes + ref_bytes)
    if "logprob" in steps or "ref_logp" in steps:
        rows += _logprob_rows(
            plan, algo, mem, n, t, tn, grid, ref, ref_dtype, opt_bytes + ref_bytes, per_chip_bytes(state), steps
        )
    if "update" in steps:
        rows += _update_row(plan, algo, mem, rl, tx, state, state_sh, n, g, t, tn, grid, ref_bytes)
    if "reward" in steps:
        rows += _reward_row(plan, rl, n, tn, opt_bytes + per_chip_bytes(state.params) + ref_bytes)
    return rows


def rollout_params(plan: Plan, mem) -> tuple[Any, int, str]:
    """(the weights the rollout decodes with, bytes per chip resident beside them, a label) as the runner lays
    them out: memory.decode_layout="sample" on an FSDP mesh decodes a compute-dtype copy without FSDP while the
    fp32 train parameters stay resident; otherwise the train parameters themselves."""
    if mem.decode_layout != "sample" or plan.mesh.shape["fsdp"] == 1:
        return plan.params, 0, ""
    from dmx_jax.training.grpo import sampling_shardings

    dtype = jnp.dtype(plan.mcfg.dtype)
    copy = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(
            x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=sh
        ),
        plan.params,
        sampling_shardings(plan.params, plan.mesh),
    )
    return copy, per_chip_bytes(plan.params), f", {dtype.name} weights without FSDP"


def _rollout_row(plan, algo, mem, rl, n, t, tn, grid, kv_bytes_row, resident):
    from dmx_jax.perf.flops import forward_flops
    from dmx_jax.training import rl_vlm

    mesh, mcfg = plan.mesh, plan.mcfg
    sampler = rl_vlm.make_sampler(
        plan.graphdef,
        algo,
        stop_token_ids=(mcfg.eos_token_id,),
        pad_id=mcfg.pad_token_id,
        cache_dtype=mem.kv_cache_dtype,
    )
    rows_in = n // sampler.group_size
    prompts = {
        **text_batch(rows_in, t, mesh, loss=False),
        **image_batch(mcfg, rows_in, plan.patches, mesh),
        "deltas": batch_leaf((rows_in, 1), jnp.int32, mesh),
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))
    params, extra, layout = rollout_params(plan, mem)
    resident += extra
    k = algo.rollout_micro_batches
    micro = f", {k} micro-batches" if k > 1 else ""
    row = _row(plan, "grpo", "rollout", n, t + tn, f"{rows_in} prompts [{t}] -> {n} x {tn} new{layout}{micro}")
    compile_row(
        row,
        sampler.sample,
        (params, prompts, rng),
        in_shardings=(
            jax.tree.map(lambda x: x.sharding, params),
            jax.tree.map(lambda x: x.sharding, prompts),
            rng.sharding,
        ),
        out_shardings=None,
        mesh=mesh,
        resident_bytes=resident,
    )
    prefill = forward_flops(mcfg, text_tokens=rows_in * t, seq_len=t, image_grids=[grid] * rows_in).total
    dec_tok = forward_flops(mcfg, text_tokens=n, seq_len=2 * t + tn, lm_head_tokens=n).total  # mean context
    decode = dec_tok * tn
    dec_bytes = tn * (k * _weight_read_bytes(plan) + n / mesh.size * (t + tn / 2) * kv_bytes_row)  # weights per slice
    t_pre = prefill / (row.chips * plan.chip.peak_bf16)
    t_dec = max(decode / (row.chips * plan.chip.peak_bf16), dec_bytes / plan.chip.hbm_bw)
    row.flops, row.step_time_s = prefill + decode, t_pre + t_dec
    row.mfu = row.flops / (row.step_time_s * row.chips * plan.chip.peak_bf16)
    return [row]


def _logprob_fn(mem):
    from dmx_jax.training import rl_vlm

    return lambda model, batch: rl_vlm.completion_logprobs(model, batch, chunk_size=mem.loss_chunk)


def _micro_batched(fn, k: int):
    """fn(params, batch) over k sequential row slices, as GRPOLearner runs its log-prob passes."""
    if k <= 1:
        return fn
    from dmx_jax.training.grpo import map_row_slices

    return lambda params, batch: map_row_slices(lambda b: fn(params, b), batch, k)


def _logprob_rows(plan, algo, mem, n, t, tn, grid, ref, ref_dtype, resident_policy, resident_ref, steps):
    """Completion log-probs (policy = pi_old when recomputed, and the reference)."""
    from flax import nnx

    from dmx_jax.perf.flops import forward_flops

    mesh, mcfg = plan.mesh, plan.mcfg
    rows = []
    comp = {
        "completion": batch_leaf((n, tn), jnp.int32, mesh),
        "completion_mask": batch_leaf((n, tn), jnp.float32, mesh),
    }
    rollout = {
        **text_batch(n, t, mesh, loss=False),
        **image_batch(mcfg, n, plan.patches, mesh),
        "deltas": batch_leaf((n, 1), jnp.int32, mesh),
        **comp,
    }
    logprob_fn = _logprob_fn(mem)
    f_lp = forward_flops(
        mcfg, text_tokens=n * (t + tn), seq_len=t + tn, image_grids=[grid] * n, lm_head_tokens=n * tn
    ).total
    for name, p_abs, resident in (("logprob", plan.params, resident_policy), ("ref_logp", ref, resident_ref)):
        if name not in steps or name == "ref_logp" and (not algo.kl_coef or ref_dtype is None):
            continue  # same program as the policy pass (reference in the policy's dtype)
        fn = _micro_batched(
            lambda params, batch: logprob_fn(nnx.merge(plan.graphdef, params), batch), algo.logprob_micro_batches
        )
        micro = f", {algo.logprob_micro_batches} micro-batches" if algo.logprob_micro_batches > 1 else ""
        row = _row(plan, "grpo", name, n, t + tn, f"[{n},{t}+{tn}]{micro}")
        compile_row(
            row,
            fn,
            (p_abs, rollout),
            in_shardings=(jax.tree.map(lambda x: x.sharding, p_abs), jax.tree.map(lambda x: x.sharding, rollout)),
            out_shardings=None,
            mesh=mesh,
            resident_bytes=resident,
        )
        rows.append(roofline(row, plan.chip, flops=f_lp, executed=f_lp, hbm_bytes_per_chip=_weight_read_bytes(plan)))
    return rows


def _update_row(plan, algo, mem, rl, tx, state, state_sh, n, g, t, tn, grid, ref_bytes):
    """The policy update (one optimizer step over the mini-batch)."""
    from dmx_jax.perf.flops import train_flops
    from dmx_jax.training import rl_vlm
    from dmx_jax.training.grpo import make_policy_update
    from experiments.stages import stage_trainable

    mesh, mcfg = plan.mesh, plan.mcfg
    from dmx_jax.training.rollout import Rollout

    mini = n if not algo.ppo_mini_batch_size else algo.ppo_mini_batch_size * g
    tokens = lambda dtype=jnp.float32: batch_leaf((mini, tn), dtype, mesh)
    rows = lambda: batch_leaf((mini,), jnp.float32, mesh)
    inputs = {
        **text_batch(mini, t, mesh, loss=False),
        **image_batch(mcfg, mini, plan.patches, mesh),
        "deltas": batch_leaf((mini, 1), jnp.int32, mesh),
        "completion": tokens(jnp.int32),
        "completion_mask": tokens(),
    }
    upd = Rollout(
        inputs=inputs,
        sampler_logp=tokens(),
        scores=rows(),
        truncated=rows(),
        loss_mask=tokens(),
        advantages=tokens(),
        old_logp=None if algo.old_logp == "current" else tokens(),
        ref_logp=tokens() if algo.kl_coef else None,
    )
    step = make_policy_update(
        plan.graphdef,
        algo,
        tx,
        rl_vlm.make_policy_logprob(algo, chunk_size=mem.loss_chunk),
        grad_accum=rl.optim.grad_accum,
        compute_dtype=jnp.dtype(mcfg.dtype),
        trainable=stage_trainable(rl, plan.params),
    )
    row = _row(
        plan,
        "grpo",
        "update",
        mini,
        t + tn,
        f"[{mini},{t}+{tn}]" + (f", accum {rl.optim.grad_accum}" if rl.optim.grad_accum > 1 else ""),
    )
    compile_row(
        row,
        step,
        (state, upd),
        in_shardings=(state_sh, jax.tree.map(lambda x: x.sharding, upd)),
        out_shardings=(state_sh, None),
        donate=(0,),
        mesh=mesh,
        resident_bytes=ref_bytes,
    )
    f_up = train_flops(
        mcfg, text_tokens=mini * (t + tn), seq_len=t + tn, image_grids=[grid] * mini, lm_head_tokens=mini * tn
    ).total
    passes = 4 if mcfg.remat != "none" else 3
    return [
        roofline(
            row,
            plan.chip,
            flops=f_up,
            executed=f_up * passes / 3,
            hbm_bytes_per_chip=_weight_read_bytes(plan) * passes * rl.optim.grad_accum
            + 28.0 * plan.n_params / mesh.size,
        )
    ]


def _reward_row(plan, rl, n, tn, resident):
    """The runner's reward program (`score_tokens` with `rl.reward_config()`, the byte budget the runner
    derives) over a stand-in token table of the model's vocabulary size whose longest token is Qwen2.5's;
    rows split over data x fsdp, the table replicated. Roofline from XLA's cost analysis of the program."""
    from dmx_jax.rewards.combine import ground_truth_arrays, score_tokens, text_budget
    from dmx_jax.rewards.text_bytes import QWEN2_5_LONGEST_TOKEN_BYTES

    mesh, rep = plan.mesh, NamedSharding(plan.mesh, P())
    cfg = rl.reward_config()
    vocab, width = plan.mcfg.text.vocab_size, QWEN2_5_LONGEST_TOKEN_BYTES
    table = {
        "bytes": jax.ShapeDtypeStruct((vocab, width), jnp.uint8, sharding=rep),
        "length": jax.ShapeDtypeStruct((vocab,), jnp.int32, sharding=rep),
    }
    budget = text_budget(cfg, {"length": np.array([width])}, tn)
    one = ground_truth_arrays(["x"], [[]], cfg)
    truth = {k: batch_leaf((n, *v.shape[1:]), v.dtype, mesh) for k, v in one.items()}
    tokens, cmask = batch_leaf((n, tn), jnp.int32, mesh), batch_leaf((n, tn), jnp.int32, mesh)
    answer = "completion buffer" if cfg.answer_bytes is None else f"answer {cfg.answer_bytes} B"
    row = _row(plan, "grpo", "reward", n, tn, f"{cfg.name}: {n} x {budget} B, {answer}")
    args = (tokens, cmask, truth, table)
    compile_row(
        row,
        lambda a, m, tr, tab: score_tokens(a, m, tr, tab, cfg, budget),
        args,
        in_shardings=jax.tree.map(lambda x: x.sharding, args),
        out_shardings=None,
        mesh=mesh,
        resident_bytes=resident,
    )
    if row.xla_bytes is not None:
        row.flops = 0.0  # integer and byte work: no matmul FLOPs for the MXU roofline
        row.step_time_s = max((row.xla_flops or 0.0) / plan.chip.peak_bf16, row.xla_bytes / plan.chip.hbm_bw)
    return [row]


def grpo_step_summary(rows: list[Row], algo, prompts_per_step: int) -> str | None:
    """One line per topology: the GRPO step's roofline (rollout, the pi_old pass unless old_logp is 'sampler'
    or 'current', the reference pass when kl_coef > 0 (the policy program when the reference keeps its dtype),
    num_iterations x mini-batches updates, the reward) and the reward's share of it."""
    kl = bool(algo.kl_coef) or bool(algo.kl_reward_coef)
    mini = prompts_per_step // algo.ppo_mini_batch_size if algo.ppo_mini_batch_size else 1
    runs = {
        "rollout": 1,
        "logprob": int(algo.old_logp == "trainer"),
        "ref_logp": int(kl),
        "update": algo.num_iterations * mini,
        "reward": 1,
    }
    lines = []
    for topo in dict.fromkeys(r.topology for r in rows):
        times = {r.step: r.step_time_s for r in rows if r.stage == "grpo" and r.topology == topo}
        times.setdefault("ref_logp", times.get("logprob"))
        if any(times.get(k) is None for k in runs):
            continue
        total = sum(runs[k] * times[k] for k in runs)
        parts = ", ".join(f"{k} {runs[k]} x {times[k]:.2f}" for k in runs if runs[k])
        lines.append(
            f"grpo step on {topo}: roofline {total:.2f} s ({parts}); the reward is "
            f"{100 * times['reward'] / total:.1f}% of it"
        )
    return "\n".join(lines) or None


def run(cfg, topology: str, stages=STAGES, emit: Callable[[Row], None] | None = None) -> list[Row]:
    plan = make_plan(cfg, topology)
    rows: list[Row] = []
    for stage in stages:
        new = grpo_rows(plan) if stage == "grpo" else supervised_rows(plan, stage)
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
    from experiments.configs import PRESETS
    from experiments.overrides import apply_overrides
    from experiments.validate import validate

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
