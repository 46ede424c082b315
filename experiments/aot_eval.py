"""The fit check's evaluation row: greedy generation of held-out reasoning prompts as experiments.evaluate runs it
(eval_batch_size(mesh) prompts a call, `eval_decoding` at eval.reasoning_max_new_tokens, the prompts split over
the mesh's batch shards as Placement.on(mesh) places them, the weights in the train layout a finished stage
leaves them in)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dmx_jax.perf.flops import forward_flops
from dmx_jax.sampling.generate import generate_arrays
from dmx_jax.sharding import batch_shards
from dmx_jax.sharding.rules import batch_spec
from experiments.aot_plan import Plan, _image_grid, _row, _weight_read_bytes
from experiments.evaluate import eval_batch_size, eval_decoding
from experiments.tpu_compile import Row, compile_row, image_batch, text_batch


def eval_inputs(plan: Plan, rows: int, t: int) -> dict:
    """Abstract evaluation prompts [rows, t] with their images, rows split over the mesh's batch shards."""
    split = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(plan.mesh, batch_spec(x.ndim)))
    prompts = {
        **text_batch(rows, t, plan.mesh, loss=False),
        **image_batch(plan.mcfg, rows, plan.patches, plan.mesh),
        "deltas": jax.ShapeDtypeStruct((rows, 1), jnp.int32),
    }
    return jax.tree.map(split, prompts)


def eval_rows(plan: Plan) -> list[Row]:
    cfg, mcfg = plan.cfg, plan.mcfg
    b, t, tn = eval_batch_size(plan.mesh), cfg.data.reasoning_prompt_len, cfg.eval.reasoning_max_new_tokens
    shards = batch_shards(plan.mesh)
    decoding = eval_decoding(tn, mcfg.eos_token_id, mcfg.pad_token_id)
    program = jax.jit(functools.partial(generate_arrays, plan.graphdef, decoding=decoding))
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(plan.mesh, P()))
    row = _row(plan, "eval", "generate", b, t + tn, f"{b} prompts [{t}] -> {tn} new, greedy, over {shards} shards")
    compile_row(row, program, (plan.params, eval_inputs(plan, b, t), rng), mesh=plan.mesh)
    prefill = forward_flops(mcfg, text_tokens=b * t, seq_len=t, image_grids=[_image_grid(plan)] * b).total
    decode = forward_flops(mcfg, text_tokens=b, seq_len=2 * t + tn, lm_head_tokens=b).total * tn
    kv_row = 2 * mcfg.text.num_hidden_layers * mcfg.text.num_key_value_heads * mcfg.text.head_dim
    kv_bytes = kv_row * jnp.dtype(mcfg.dtype).itemsize * b / shards * (t + tn / 2)  # a chip holds its rows
    t_dec = max(
        decode / (row.chips * plan.chip.peak_bf16), tn * (_weight_read_bytes(plan) + kv_bytes) / plan.chip.hbm_bw
    )
    row.flops = prefill + decode
    row.step_time_s = prefill / (row.chips * plan.chip.peak_bf16) + t_dec
    row.mfu = row.flops / (row.step_time_s * row.chips * plan.chip.peak_bf16)
    return [row]
