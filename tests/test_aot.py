"""experiments.aot and experiments.tpu_compile: TPU compiles ahead of time on the CPU (libtpu topology,
JAX_PLATFORMS=cpu kept)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dmx_jax.model.attention import attention, causal_mask
from dmx_jax.model.lora import adapter_count, adapters_of
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.sharding.rules import batch_spec
from experiments import aot, aot_eval, aot_grpo, evaluate, tpu_compile
from experiments.configs import tiny
from experiments.overrides import apply_overrides

needs_libtpu = pytest.mark.skipif(
    not tpu_compile.libtpu_available(), reason="libtpu is not importable: pip install 'jax[tpu]' (the tpu extra)"
)


def test_unknown_topology_is_one_line(capsys):
    assert aot.main(["--config", "tiny", "--topology", "v9x-8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown topology 'v9x-8'" in err


def test_slice_names_resolve():
    assert tpu_compile.resolve_topology("v5p-8")[1] == "v5p:2x2x1"
    assert tpu_compile.resolve_topology("v6e:2x4")[2].hbm_gib == 32.0
    assert {n.split("-")[0] for n in tpu_compile.SLICES} >= {"v4", "v5e", "v5p", "v6e"}


@needs_libtpu
def test_step_that_does_not_fit_is_a_row_with_numbers():
    plan_mesh = jax.sharding.Mesh(tpu_compile.topology_devices("v5e:2x2")[:1], ("x",))
    rep = jax.sharding.NamedSharding(plan_mesh, jax.sharding.PartitionSpec())
    x = jax.ShapeDtypeStruct((100_000,), jnp.float32, sharding=rep)
    row = tpu_compile.Row("sft", "train", "v5e-4", 4, 16.0, 0, 1, 1, "")
    tpu_compile.compile_row(row, jax.jit(lambda v: jnp.cumsum(jnp.outer(v, v), axis=0)[-1]), (x,), mesh=plan_mesh)
    assert row.fits is False and row.peak_gb > row.hbm_gb and row.headroom < 0, row
    assert "DOES NOT FIT" in row.text() and "RESOURCE_EXHAUSTED" in row.text()
    js = json.loads(aot.row_json(row))
    assert js["fits"] is False and js["peak_gb"] > js["hbm_gb"] and js["topology"] == "v5e-4"


@pytest.mark.slow  # ~20 s idle, 90 s on the shared 2-core machine
@needs_libtpu
def test_tiny_sft_rows_and_json(capsys):
    rc = aot.main(
        [
            "--config",
            "tiny",
            "--topology",
            "v5e-4",
            "--stage",
            "sft",
            "--json",
            "--set",
            "model=tiny",
            "--set",
            "memory.loss_chunk=64",
            "--set",
            "memory.attention=chunked",
        ]
    )
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert rc == 0 and len(lines) == 1
    row = json.loads(lines[0])
    for key in ("stage", "step", "topology", "chips", "hbm_gb", "peak_gb", "fits", "params", "global_batch", "seq_len"):
        assert key in row
    assert row["stage"] == "sft" and row["chips"] == 4 and row["fits"] and 0 < row["peak_gb"] < row["hbm_gb"]
    assert row["params"] > 1e5 and row["flops"] > 0 and 0 < row["mfu"] <= 1


@pytest.mark.slow
@needs_libtpu
def test_every_grpo_row_compiles_for_a_tpu_slice(capsys):
    """`--stage grpo` compiles the run's GRPO programs (on an FSDP mesh the weights' re-layout for decoding; rollout,
    pi_old and reference log-prob passes, the update,
    the reward at a small byte budget) with libtpu for a v5e-4 slice, each a row that fits (a bf16 reference is a
    program of its own; in the policy's dtype the reference pass is the pi_old program and has no row). The 7B and
    3B rows are this command's output on their presets (RESULTS.md): one 7B program takes 5-8 minutes to
    compile on 2 cores, more than the suite can spend."""
    rc = aot.main(
        ["--config", "tiny", "--topology", "v5e-4", "--stage", "grpo", "--json", "--set", "model=tiny"]
        + ["--set", "mesh.data=1", "--set", "mesh.fsdp=-1"]
        + ["--set", "memory.loss_chunk=64", "--set", "rl.algo.kl_coef=0.01", "--set", "memory.ref_dtype=bfloat16"]
        + ["--set", "rl.algo.max_new_tokens=32", "--set", "rl.reward_bytes_per_token=4"]
        + ["--set", "rl.reward_answer_bytes=64"]
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rc == 0 and [r["step"] for r in rows] == list(aot.GRPO_STEPS), rows
    for r in rows:
        assert r["fits"] and r["peak_gb"] > 0 and r["topology"] == "v5e-4" and r["chips"] == 4, r


@needs_libtpu
def test_splash_attention_compiles_for_v5p_at_7b_attention_shapes():
    """Mosaic compiles the splash kernel (forward + backward, under remat, per-shard through shard_map) for a
    v5p-8 mesh at the 7B decoder's attention shapes: 28 query / 4 KV heads of 128, 1,024 tokens, bf16, 4 rows per
    chip, causal with left padding. (The whole 7B SFT step with memory.attention=splash still fails in Mosaic,
    BUILD_NOTES.md.)"""

    mesh = Mesh(
        np.asarray(tpu_compile.topology_devices("v5p:2x2x1")).reshape(1, 4, 1),
        ("data", "fsdp", "tensor"),
        axis_types=(AxisType.Auto,) * 3,
    )
    rows = NamedSharding(mesh, P("fsdp"))
    q = jax.ShapeDtypeStruct((16, 1024, 28, 128), jnp.bfloat16, sharding=rows)
    kv = jax.ShapeDtypeStruct((16, 1024, 4, 128), jnp.bfloat16, sharding=rows)
    key_mask = jax.ShapeDtypeStruct((16, 1024), jnp.int32, sharding=rows)

    @jax.checkpoint
    def attend(q, k, v, km):
        return attention(q, k, v, causal_mask(km, 0, q.shape[1]), "splash", 512)

    def loss(q, k, v, km):
        return jax.grad(lambda *a: (attend(*a, km).astype(jnp.float32) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)

    with jax.set_mesh(mesh):
        compiled = jax.jit(loss).lower(q, kv, kv, key_mask).compile()
    hlo = compiled.as_text()
    assert "tpu_custom_call" in hlo, "the splash kernel is not in the compiled step"
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * 2**30


def test_reward_row_compiles_the_runners_reward_at_its_byte_budget(monkeypatch):
    """The fit check's reward row is the runner's program: `score_tokens` under `rl.reward_config()` at the
    budget the runner derives (max_new_tokens x min(Qwen2.5's longest token, the cap)), rows split over the
    mesh, with a roofline from XLA's cost analysis. Compiled here on the 8 host devices standing in for v5e-8."""

    monkeypatch.setattr(aot, "topology_devices", lambda topo: jax.devices())
    cfg = apply_overrides(tiny(), ["rl.reward_bytes_per_token=4", "rl.reward_answer_bytes=64", "rl.prompts_per_step=8"])
    plan = aot.make_plan(cfg, "v5e-8")
    (row,) = aot.grpo_rows(plan, steps=("reward",))
    tn = cfg.rl.algo.max_new_tokens
    assert row.step == "reward" and row.global_batch == 8 * cfg.rl.algo.group_size
    assert f"grounded: {row.global_batch} x {4 * tn} B, answer 64 B" in row.shapes, row.shapes
    assert row.fits and row.xla_bytes > 0 and row.step_time_s > 0, row.text()
    steps = dict.fromkeys(aot.GRPO_STEPS[1:-1], 1.0)  # no re-layout row: data-parallel mesh
    rows = [dataclasses.replace(row, step=s, step_time_s=t) for s, t in steps.items()] + [row]
    line = aot.grpo_step_summary(rows, cfg.rl.algo, cfg.rl.prompts_per_step)
    total = 3.0 + row.step_time_s + (1.0 if cfg.rl.algo.kl_coef else 0.0)  # rollout, pi_old, update, reward
    assert f"roofline {total:.2f} s" in line and f"{100 * row.step_time_s / total:.1f}% of it" in line, line
    per_chip = row.global_batch * row.seq_len / total / row.chips  # the update row's rows x length
    assert f"{per_chip:,.0f} tokens/s per chip" in line, line


def test_rollout_row_decodes_with_the_layout_the_runner_uses(monkeypatch):
    """memory.decode_layout='sample' on an FSDP mesh: the rollout row compiles the compute-dtype copy without FSDP
    (every chip holds the whole model) with the fp32 train parameters resident beside it, as GRPOLearner's
    sample_shardings do; 'train' (the scaled presets) decodes the train parameters themselves."""

    monkeypatch.setattr(aot, "topology_devices", lambda topo: jax.devices())
    cfg = apply_overrides(tiny(), ["dtype=bfloat16", "mesh.data=1", "mesh.fsdp=-1"])
    plan = aot.make_plan(cfg, "v5e-8")
    train_bytes = tpu_compile.per_chip_bytes(plan.params)
    copy, resident, label = aot_grpo.rollout_params(plan, cfg.memory)
    whole = sum(x.size for x in jax.tree.leaves(plan.params))
    assert cfg.memory.decode_layout == "sample" and "bfloat16 weights without FSDP" in label
    assert resident == train_bytes and tpu_compile.per_chip_bytes(copy) > 1.9 * whole >= 2 * train_bytes
    same, none, _ = aot_grpo.rollout_params(plan, apply_overrides(cfg, ["memory.decode_layout=train"]).memory)
    assert same is plan.params and none == 0


def test_lora_plan_has_a_bf16_base_no_base_optimizer_state_and_no_base_copy_for_the_reference(monkeypatch):
    """With lora.rank > 0 the fit check builds what the runner trains: the base in the compute dtype, adapters in
    fp32, the stage optimizer holding moments for the adapters alone, and GRPO's reference as the policy's own
    base with a copy of the starting adapters (no copy of the base, no log-prob row of its own)."""

    monkeypatch.setattr(aot, "topology_devices", lambda topo: jax.devices())
    cfg = apply_overrides(
        tiny(), ["dtype=bfloat16", "lora.rank=4", "lora.alpha=8", "rl.algo.kl_coef=0.01", "memory.ref_dtype=bfloat16"]
    )
    plan = aot.make_plan(cfg, "v5e-8")
    n_adapters = adapter_count(plan.params)
    dtypes = {str(x.dtype) for x in jax.tree.leaves(plan.params)}
    assert n_adapters > 0 and "bfloat16" in dtypes
    program, (state, _) = aot.supervised_program(plan, "sft")
    moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert moments == 2 * n_adapters, (moments, n_adapters)  # Adam's mu and nu of the adapters only
    monkeypatch.setattr(aot, "_logprob_rows", lambda *a: [a[7], a[8], a[9]])  # (ref, ref_dtype, resident)
    ref, ref_dtype, resident = aot.grpo_rows(plan, steps=("ref_logp",))
    assert ref is plan.params and ref_dtype is None
    adapters = tpu_compile.per_chip_bytes(adapters_of(plan.params))
    assert adapters > 0 and resident == tpu_compile.per_chip_bytes(state.opt_state) + adapters  # no base copy


@needs_libtpu
def test_eval_row_compiles_the_evaluations_generate_call(capsys, monkeypatch):
    """`--stage eval` compiles greedy generation of EVAL_BATCH held-out reasoning prompts with the decoding settings
    experiments.evaluate.generate_texts passes (captured from a real call below), for a v5e-4 slice."""
    seen, placed = [], []

    def fake_generate(graphdef, params, part, rng, decoding):
        seen.append((part["input_ids"].shape[0], decoding))
        placed.append(part["input_ids"].sharding)
        n, t = part["input_ids"].shape[0], decoding.max_new_tokens
        return np.zeros((n, t), np.int32), np.zeros((n, t)), np.zeros((n, t), np.int32)

    monkeypatch.setattr(evaluate, "generate_arrays", fake_generate)
    tok = type("Tok", (), {"im_end_id": 7, "pad_id": 0, "decode": lambda self, ids: ""})()
    arrays = {"input_ids": np.zeros((3, 5), np.int32), "attention_mask": np.ones((3, 5), np.int32)}
    evaluate.generate_texts(None, None, arrays, tok, max_new_tokens=9)
    assert seen == [(evaluate.EVAL_BATCH, evaluate.eval_decoding(9, 7, 0))]
    # on a run's mesh the prompts are split over its batch shards, as the row below compiles them
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=1))
    placement = evaluate.Placement.on(mesh)
    evaluate.generate_texts(None, None, arrays, tok, max_new_tokens=9, placement=placement)
    assert seen[-1][0] == evaluate.eval_batch_size(mesh) == 16 and placed[-1].spec == batch_spec(2)
    assert evaluate.eval_batch_size(make_mesh(MeshConfig(data=1, fsdp=-1, tensor=1), devices=jax.devices()[:6])) == 18
    monkeypatch.setattr(aot, "topology_devices", lambda topo: jax.devices())
    plan = aot.make_plan(tiny(), "v5e-8")
    abstract = aot_eval.eval_inputs(plan, 16, 5)
    assert abstract["input_ids"].sharding.spec == batch_spec(2)
    assert abstract["pixel_values"].sharding.spec == batch_spec(3)

    rc = aot.main(["--config", "tiny", "--topology", "v5e-4", "--stage", "eval", "--json", "--set", "model=tiny"])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert rc == 0 and [(r["stage"], r["step"]) for r in rows] == [("eval", "generate")], rows
    assert rows[0]["fits"] and rows[0]["global_batch"] == evaluate.EVAL_BATCH and rows[0]["step_time_s"] > 0, rows
