"""The fit check compiles what the trainer runs: for SFT, cold start and every GRPO program, the programs the stage
runner builds (experiments.stages: plan_stage / stage_state / the recipe's programs, from a real model, tokenizer
and optimizer state) and those experiments.aot builds from the abstract plan lower to the same StableHLO on an
8-device mesh, and take the same abstract train state (shapes, dtypes, shardings). A full fine-tuning config
(row-weighted cold-start loss, a bf16 KL reference, the adaptive in-reward KL's state) and a LoRA config."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from data_pipelines.pipeline import stack_rows
from data_pipelines.synthetic import SyntheticConfig, examples
from dmx_jax.model import Qwen25VL
from dmx_jax.model.lora import adapters_of, cast_base
from dmx_jax.sampling.generate import stop_token_ids
from dmx_jax.sharding import make_mesh
from experiments import aot, aot_grpo, stages
from experiments.configs import tiny
from experiments.datasets import build_tokenizer, encode_all, model_config_for
from experiments.overrides import apply_overrides
from experiments.pipeline import with_lora
from experiments.validate import validate

COMMON = [
    "model=tiny",
    "mesh.data=2",
    "mesh.fsdp=4",
    "data.image_size=64",
    "data.max_pixels=4096",
    "data.min_pixels=784",
    "data.max_seq_len=128",
    "data.reasoning_seq_len=192",
    "data.reasoning_prompt_len=128",
    "sft.batch_size=8",
    "cold_start.batch_size=8",
    "sft.optim.grad_accum=2",
    "rl.prompts_per_step=4",
    "rl.algo.max_new_tokens=16",
    "memory.loss_chunk=32",
]
CONFIGS = {
    "full": COMMON
    + [
        "cold_start.loss_weighting=row",
        "rl.algo.kl_coef=0.01",
        "memory.ref_dtype=bfloat16",
        "rl.algo.kl_reward_coef=0.01",
        "rl.algo.kl_ctrl=adaptive",
        "rl.algo.logprob_micro_batches=2",
    ],
    "lora": COMMON + ["dtype=bfloat16", "lora.rank=4", "lora.alpha=8", "rl.algo.kl_coef=0.01"],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [examples("train", i, SyntheticConfig(image_size=64, seed=0)) for i in range(200)]
    return build_tokenizer(corpus, 2048, tmp_path_factory.mktemp("tok"))


def _runner(cfg, tok):
    """What experiments.pipeline / run_stage build: the model config, parameters, mesh and each stage's programs."""
    mcfg = with_lora(model_config_for(cfg, tok), cfg.lora)
    graphdef, state = nnx.split(Qwen25VL(mcfg, nnx.Rngs(cfg.seed)))
    params = nnx.to_pure_dict(state)
    if cfg.lora.rank:
        params = cast_base(params, mcfg.dtype)
    mesh = make_mesh(cfg.mesh, jax.devices())
    built = {}
    for name, section in (("sft", cfg.sft), ("cold_start", cfg.cold_start), ("grpo", cfg.rl)):
        spec, recipe = stages.plan_stage(
            name, section, graphdef, mcfg, tok, params, mesh=mesh, seed=cfg.seed, memory=cfg.memory
        )
        tx, st, shardings = stages.stage_state(spec, recipe, params, mesh, cfg.seed)
        built[name] = (recipe.programs(tx, recipe.trainable, shardings), st, shardings)
    return mcfg, mesh, built


def _same_state(runner_state, runner_sh, abstract_state, abstract_sh):
    got = jax.tree.map(lambda x: (x.shape, str(x.dtype)), runner_state)
    want = jax.tree.map(lambda x: (x.shape, str(x.dtype)), abstract_state)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
    mismatched = [(a.spec, b.spec) for a, b in zip(jax.tree.leaves(runner_sh), jax.tree.leaves(abstract_sh)) if a != b]
    assert not mismatched, mismatched[:3]


def _text(program, args, mesh) -> str:
    with jax.set_mesh(mesh):
        return program.lower(*args).as_text()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fit_check_lowers_the_runners_programs(name, tokenizer, monkeypatch):
    cfg = validate(apply_overrides(tiny(), CONFIGS[name]))
    mcfg, mesh, built = _runner(cfg, tokenizer)
    monkeypatch.setattr(aot, "topology_devices", lambda topo: mesh.devices.reshape(-1).tolist())
    plan = aot.make_plan(cfg, "v5e-8", model_cfg=mcfg)
    plan = dataclasses.replace(plan, stop_ids=stop_token_ids(tokenizer, None))
    assert plan.mesh == mesh

    for stage in ("sft", "cold_start"):
        program, st, sh = built[stage]
        checked, (abstract, batch) = aot.supervised_program(plan, stage)
        _same_state(st, sh, abstract, jax.tree.map(lambda x: x.sharding, abstract))
        assert _text(program.jitted, (abstract, batch), mesh) == _text(checked.jitted, (abstract, batch), mesh), stage

    progs, st, sh = built["grpo"]
    checked, _, abstract, abstract_sh = aot.grpo_programs_of(plan)
    _same_state(st, sh, abstract, abstract_sh)
    algo, g = cfg.rl.algo, cfg.rl.algo.group_size
    n, t, tn = cfg.rl.prompts_per_step * g, cfg.data.reasoning_prompt_len, algo.max_new_tokens
    assert progs.sampler.group_size == checked.sampler.group_size
    assert progs.reference_kind == checked.reference_kind == ("adapters" if cfg.lora.rank else "params")
    params, _, _ = aot_grpo.rollout_params(plan, cfg.memory)
    prompts, rng = aot_grpo.rollout_inputs(plan, checked.sampler, n, t)
    scored = aot_grpo.scored_inputs(plan, n, t, tn)
    update = aot_grpo.update_inputs(plan, algo, n, g, t, tn)
    ref_adapters = adapters_of(plan.params) if cfg.lora.rank else None
    pairs = {
        "rollout": (jax.jit(progs.sampler.sample), jax.jit(checked.sampler.sample), (params, prompts, rng)),
        "logprob": (progs.policy_logprob, checked.policy_logprob, (plan.params, scored)),
        "ref_logp": (progs.reference_logprob, checked.reference_logprob, (plan.params, scored, ref_adapters)),
        "update": (progs.update.jitted, checked.update.jitted, (abstract, update)),
        "relayout": (progs.relayout, checked.relayout, (plan.params,)),  # FSDP mesh, decode_layout="sample"
    }
    for step, (run, fit, args) in pairs.items():
        assert _text(run, args, mesh) == _text(fit, args, mesh), step


def test_the_checked_supervised_batch_is_the_runners(tokenizer):
    """The abstract batch the fit check feeds the SFT step has the runner's keys, dtypes, ranks and row layout."""
    cfg = validate(apply_overrides(tiny(), CONFIGS["full"]))
    mcfg = model_config_for(cfg, tokenizer)
    ex = [examples("train", i, SyntheticConfig(image_size=64, seed=0), task="referring") for i in range(8)]
    rows = encode_all(ex, tokenizer, mcfg, cfg, cfg.data.max_seq_len, reasoning=False)
    mesh = make_mesh(cfg.mesh, jax.devices())
    spec, recipe = stages.plan_stage("sft", cfg.sft, None, mcfg, tokenizer, None, mesh=mesh, memory=cfg.memory)
    arrays, meta = stack_rows(rows[:8])
    placed = recipe.prepare(arrays, meta, lambda a: stages.place_batch(a, mesh))
    plan_batch = aot.text_batch(8, cfg.data.max_seq_len, mesh)
    plan_batch |= aot.image_batch(mcfg, 8, int(placed["pixel_values"].shape[1]), mesh)
    describe = lambda tree: jax.tree.map(lambda x: (np.dtype(x.dtype).name, x.ndim, x.sharding.spec), tree)
    assert describe(placed) == describe(plan_batch)
