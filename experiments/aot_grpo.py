"""The fit check's GRPO rows: the rollout (prefill and decode loop, with the weights in the layout the runner
decodes with), the completion log-prob passes (policy and reference), the policy update and the reward program,
each compiled for the slice with its roofline, and the GRPO step's roofline summed from them."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dmx_jax.perf.flops import forward_flops, train_flops
from dmx_jax.rewards.combine import ground_truth_arrays, score_tokens, text_budget
from dmx_jax.rewards.text_bytes import QWEN2_5_LONGEST_TOKEN_BYTES
from dmx_jax.training.rollout import Rollout
from experiments.aot_plan import Plan, _row, _weight_read_bytes
from experiments.stage_programs import decode_shardings
from experiments.tpu_compile import Row, batch_leaf, compile_row, image_batch, per_chip_bytes, roofline, text_batch


def rollout_params(plan: Plan, mem) -> tuple[Any, int, str]:
    """(the weights the rollout decodes with, bytes per chip resident beside them, a label) as the runner lays
    them out (experiments.stage_programs.decode_shardings): memory.decode_layout="sample" on an FSDP mesh decodes a
    compute-dtype copy without FSDP while the fp32 train parameters stay resident; otherwise the train parameters
    themselves."""
    layout = decode_shardings(plan.params, plan.mesh, mem)
    if layout is None:
        return plan.params, 0, ""
    dtype = jnp.dtype(plan.mcfg.dtype)
    copy = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(
            x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype, sharding=sh
        ),
        plan.params,
        layout,
    )
    return copy, per_chip_bytes(plan.params), f", {dtype.name} weights without FSDP"


def rollout_inputs(plan: Plan, sampler, n: int, t: int):
    """Abstract (prompts, rng) of one rollout: P prompts when the sampler shares a prefill per group, else the
    N = P x G repeated rows."""
    rows_in = n // sampler.group_size
    prompts = {
        **text_batch(rows_in, t, plan.mesh, loss=False),
        **image_batch(plan.mcfg, rows_in, plan.patches, plan.mesh),
        "deltas": batch_leaf((rows_in, 1), jnp.int32, plan.mesh),
    }
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(plan.mesh, P()))
    return prompts, rng


def _relayout_row(plan, programs, resident):
    """The weights' re-layout before each rollout (memory.decode_layout="sample" on an FSDP mesh): the fp32 train
    parameters cast to the compute dtype and gathered into the decoding layout, the runner's own program. Roofline
    from XLA's cost analysis (HBM bytes; the all-gather's interconnect time is not counted)."""
    n_bytes = per_chip_bytes(jax.eval_shape(programs.relayout, plan.params))
    row = _row(plan, "grpo", "relayout", 0, 0, f"train layout -> decoding layout, {n_bytes / 2**30:.2f} GiB a chip")
    compile_row(row, programs.relayout, (plan.params,), mesh=plan.mesh, resident_bytes=resident)
    if row.xla_bytes is not None:
        row.flops = 0.0
        row.step_time_s = row.xla_bytes / plan.chip.hbm_bw
    return [row]


def _rollout_row(plan, programs, algo, mem, n, t, tn, grid, kv_bytes_row, resident):
    mesh, mcfg = plan.mesh, plan.mcfg
    sampler = programs.sampler
    rows_in = n // sampler.group_size
    prompts, rng = rollout_inputs(plan, sampler, n, t)
    params, extra, layout = rollout_params(plan, mem)
    resident += extra
    k = algo.rollout_micro_batches
    micro = f", {k} micro-batches" if k > 1 else ""
    row = _row(plan, "grpo", "rollout", n, t + tn, f"{rows_in} prompts [{t}] -> {n} x {tn} new{layout}{micro}")
    compile_row(row, jax.jit(sampler.sample), (params, prompts, rng), mesh=mesh, resident_bytes=resident)
    prefill = forward_flops(mcfg, text_tokens=rows_in * t, seq_len=t, image_grids=[grid] * rows_in).total
    dec_tok = forward_flops(mcfg, text_tokens=n, seq_len=2 * t + tn, lm_head_tokens=n).total  # mean context
    decode = dec_tok * tn
    dec_bytes = tn * (k * _weight_read_bytes(plan) + n / mesh.size * (t + tn / 2) * kv_bytes_row)  # weights per slice
    t_pre = prefill / (row.chips * plan.chip.peak_bf16)
    t_dec = max(decode / (row.chips * plan.chip.peak_bf16), dec_bytes / plan.chip.hbm_bw)
    row.flops, row.step_time_s = prefill + decode, t_pre + t_dec
    row.mfu = row.flops / (row.step_time_s * row.chips * plan.chip.peak_bf16)
    return [row]


def scored_inputs(plan: Plan, n: int, t: int, tn: int) -> dict:
    """Abstract log-prob pass inputs: N prompt rows plus their completions [N, Tn] and completion masks."""
    mesh = plan.mesh
    return {
        **text_batch(n, t, mesh, loss=False),
        **image_batch(plan.mcfg, n, plan.patches, mesh),
        "deltas": batch_leaf((n, 1), jnp.int32, mesh),
        "completion": batch_leaf((n, tn), jnp.int32, mesh),
        "completion_mask": batch_leaf((n, tn), jnp.float32, mesh),
    }


def _logprob_rows(plan, programs, algo, n, t, tn, grid, ref, ref_dtype, resident_policy, resident_ref, steps):
    """Completion log-probs (policy = pi_old when recomputed, with the entropy the runner logs; the reference)."""
    mesh, mcfg = plan.mesh, plan.mcfg
    rows = []
    rollout = scored_inputs(plan, n, t, tn)
    f_lp = forward_flops(
        mcfg, text_tokens=n * (t + tn), seq_len=t + tn, image_grids=[grid] * n, lm_head_tokens=n * tn
    ).total
    passes = (
        ("logprob", programs.policy_logprob, (plan.params, rollout), resident_policy),
        ("ref_logp", programs.reference_logprob, (ref, rollout, None), resident_ref),
    )
    for name, program, args, resident in passes:
        if name not in steps or name == "ref_logp" and (not algo.kl_coef or ref_dtype is None):
            continue  # the policy pass's memory (the reference in the policy's dtype, or the LoRA policy's base)
        micro = f", {algo.logprob_micro_batches} micro-batches" if algo.logprob_micro_batches > 1 else ""
        row = _row(plan, "grpo", name, n, t + tn, f"[{n},{t}+{tn}]{micro}")
        compile_row(row, program, args, mesh=mesh, resident_bytes=resident)
        rows.append(roofline(row, plan.chip, flops=f_lp, executed=f_lp, hbm_bytes_per_chip=_weight_read_bytes(plan)))
    return rows


def update_inputs(plan: Plan, algo, n: int, g: int, t: int, tn: int) -> Rollout:
    """One abstract update mini-batch (a Rollout of ppo_mini_batch_size x G rows, or the whole batch)."""
    mesh = plan.mesh
    mini = n if not algo.ppo_mini_batch_size else algo.ppo_mini_batch_size * g
    tokens = lambda dtype=jnp.float32: batch_leaf((mini, tn), dtype, mesh)
    rows = lambda: batch_leaf((mini,), jnp.float32, mesh)
    return Rollout(
        inputs=scored_inputs(plan, mini, t, tn),
        sampler_logp=tokens(),
        scores=rows(),
        truncated=rows(),
        loss_mask=tokens(),
        advantages=tokens(),
        old_logp=None if algo.old_logp == "current" else tokens(),
        ref_logp=tokens() if algo.kl_coef else None,
    )


def _update_row(plan, programs, algo, rl, state, n, g, t, tn, grid, ref_bytes):
    """The policy update (one optimizer step over the mini-batch)."""
    mesh, mcfg = plan.mesh, plan.mcfg
    upd = update_inputs(plan, algo, n, g, t, tn)
    mini = upd.scores.shape[0]
    row = _row(
        plan,
        "grpo",
        "update",
        mini,
        t + tn,
        f"[{mini},{t}+{tn}]" + (f", accum {rl.optim.grad_accum}" if rl.optim.grad_accum > 1 else ""),
    )
    compile_row(row, programs.update.jitted, (state, upd), mesh=mesh, resident_bytes=ref_bytes)
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
    program = jax.jit(
        lambda a, m, tr, tab: score_tokens(a, m, tr, tab, cfg, budget),
        in_shardings=jax.tree.map(lambda x: x.sharding, args),
    )
    compile_row(row, program, args, mesh=mesh, resident_bytes=resident)
    if row.xla_bytes is not None:
        row.flops = 0.0  # integer and byte work: no matmul FLOPs for the MXU roofline
        row.step_time_s = max((row.xla_flops or 0.0) / plan.chip.peak_bf16, row.xla_bytes / plan.chip.hbm_bw)
    return [row]


def grpo_step_summary(rows: list[Row], algo, prompts_per_step: int) -> str | None:
    """One line per topology: the GRPO step's roofline (rollout, the pi_old pass unless old_logp is 'sampler'
    or 'current', the reference pass when kl_coef > 0 (the policy program when the reference keeps its dtype),
    num_iterations x mini-batches updates, the reward), the reward's share of it, and the throughput it bounds:
    tokens (prompt + every completion slot, the update row's rows x length) per second per chip, the unit of
    EasyR1's perf/throughput (prompt + response tokens per second per GPU)."""
    kl = bool(algo.kl_coef) or bool(algo.kl_reward_coef)
    mini = prompts_per_step // algo.ppo_mini_batch_size if algo.ppo_mini_batch_size else 1
    runs = {
        "relayout": int(any(r.step == "relayout" for r in rows)),
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
        if any(times.get(k) is None for k in runs if runs[k]):
            continue
        total = sum(runs[k] * times[k] for k in runs if runs[k])
        parts = ", ".join(f"{k} {runs[k]} x {times[k]:.2f}" for k in runs if runs[k])
        update = next(r for r in rows if r.stage == "grpo" and r.topology == topo and r.step == "update")
        per_chip = update.global_batch * update.seq_len / total / update.chips
        lines.append(
            f"grpo step on {topo}: roofline {total:.2f} s ({parts}); the reward is "
            f"{100 * times['reward'] / total:.1f}% of it; {per_chip:,.0f} tokens/s per chip "
            f"({update.global_batch} x {update.seq_len} prompt + completion slots)"
        )
    return "\n".join(lines) or None
