"""Each stage runner (the supervised recipe SFT and cold start share, and GRPO) stopped by SIGTERM mid-run and
rerun resumes exactly: the same per-step losses / rewards and the same final parameters as an uninterrupted run
(SIGKILL of the same machinery is covered by test_kill_resume). Cold start is SFT's recipe, runner and loop on
reasoning rows, so SFT stands for both. Parameters and batches are split over 2 devices (FSDP), no program of a
run (first start, the interrupted one or the resume) compiles twice, and the interrupted run keeps its checkpoints
in a store apart from its stage folder (a bucket run directory's layout) and resumes from there."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from data_pipelines.synthetic import SyntheticConfig, examples
from dmx_jax.model import Qwen25VL
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.sharding.rules import tree_shardings
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.loop import MetricsWriter
from dmx_jax.training.optim import OptimConfig
from experiments import stages
from experiments.configs import DataConfig, ExperimentConfig, RLConfig, StageConfig
from experiments.datasets import build_tokenizer, encode_all, model_config_for
from tests.helpers.compile_log import compiled_again, compiles

STEPS, STOP_AT = 5, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = ExperimentConfig(
        model="tiny",
        data=DataConfig(
            image_size=64, max_pixels=64 * 64, min_pixels=28 * 28, reasoning_seq_len=512, on_too_long="skip"
        ),
    )
    scfg = SyntheticConfig(image_size=64, seed=0)
    ex = [examples("train", i, scfg, task="referring") for i in range(12)]
    corpus = [examples("train", i, scfg) for i in range(300)]
    tok = build_tokenizer(corpus, 2048, tmp_path_factory.mktemp("tok"))
    mcfg = model_config_for(cfg, tok)
    rows = {
        "sft": encode_all(ex, tok, mcfg, cfg, 160, reasoning=False),
        "grpo": encode_all(ex, tok, mcfg, cfg, 256, reasoning=True, prompt_only=True),
    }
    graphdef, state = nnx.split(Qwen25VL(mcfg, nnx.Rngs(0)))
    return graphdef, nnx.to_pure_dict(state), rows, tok, mcfg


def _run(stage, run_dir, setup, stop_at=None, monkeypatch=None, store=None):
    graphdef, params, rows, tok, mcfg = setup
    params = jax.tree.map(np.array, params)  # fresh buffers: the train step donates its state
    mesh = make_mesh(MeshConfig(1, 2, 1), devices=jax.devices()[:2])  # params and batch split over 2 devices
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    if stop_at is not None:  # a preemption notice arrives while batch `stop_at` is drawn
        real = stages.batches

        def batches_with_sigterm(*a, **k):
            it = real(*a, **k)
            nxt = type(it).__next__

            class Stopping(type(it)):
                def __next__(self):
                    if self.position // max(self.batch_size, 1) == stop_at:
                        os.kill(os.getpid(), signal.SIGTERM)
                    return nxt(self)

            it.__class__ = Stopping
            return it

        monkeypatch.setattr(stages, "batches", batches_with_sigterm)
    optim = OptimConfig(learning_rate=3e-3, warmup_steps=0, schedule="constant")
    if stage == "grpo":
        scfg = RLConfig(
            steps=STEPS,
            prompts_per_step=2,
            save_every=2,
            optim=optim,
            algo=GRPOConfig(group_size=2, max_new_tokens=8, kl_coef=0.02),
        )
    else:
        scfg = StageConfig(steps=STEPS, batch_size=2, save_every=2, optim=optim)
    spec, recipe = stages.plan_stage(stage, scfg, graphdef, mcfg, tok, params, mesh=mesh)
    ctx = stages.RunContext(mesh=mesh, writer=writer, run_config={})
    with compiles() as log:
        try:
            return stages.run_stage(spec, recipe, run_dir, params, rows[stage], ctx, store=store)
        finally:  # programs of 3+ arguments: the steps, log-prob passes, sampler, reward (not eager ops)
            assert compiled_again(log, min_args=3) == {}, f"{stage}: a program compiled twice in one run"


def _per_step(run_dir, key):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs if key in r}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_stage_sigterm_then_rerun_is_exact(stage, setup, tmp_path, monkeypatch):
    final_ref = _run(stage, tmp_path / "ref", setup)
    store = tmp_path / "bucket" / stage  # the interrupted run keeps its checkpoints in a store of their own
    with pytest.raises(SystemExit, match="stopped by signal"):
        _run(stage, tmp_path / "cut", setup, stop_at=STOP_AT, monkeypatch=monkeypatch, store=store)
    assert not (tmp_path / "cut" / "DONE.json").exists()
    assert (store / "ckpt").is_dir() and not (tmp_path / "cut" / "ckpt").exists()
    monkeypatch.undo()
    final_cut = _run(stage, tmp_path / "cut", setup, store=store)
    assert (store / "final_params").is_dir()
    key = "reward/overall" if stage == "grpo" else "loss"
    ref, cut = _per_step(tmp_path / "ref", key), _per_step(tmp_path / "cut", key)
    assert sorted(ref) == list(range(1, STEPS + 1)) and set(cut) == set(ref)
    assert cut == ref
    if stage == "grpo":
        assert _per_step(tmp_path / "cut", "loss") == _per_step(tmp_path / "ref", "loss")
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), final_cut, final_ref)


def _live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


@pytest.mark.slow  # ~32 s on two workers
def test_a_resumed_stage_keeps_no_second_copy_of_its_starting_parameters(setup, tmp_path):
    """Starting parameters placed on the mesh (as a loaded checkpoint or the previous stage leaves them): a fresh
    stage donates them to its first step; a stage resumed from a checkpoint releases them once the restored state
    holds its own. Either way the device holds one copy of the parameters (and the optimizer state) while it
    trains: the live bytes of the resumed run equal the fresh run's."""
    graphdef, params, rows, tok, mcfg = setup
    mesh = make_mesh(MeshConfig(1, 2, 1), devices=jax.devices()[:2])
    optim = OptimConfig(learning_rate=3e-3, warmup_steps=0, schedule="constant")
    param_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))

    def run(steps: int) -> list[int]:
        start = jax.device_put(jax.tree.map(np.array, params), tree_shardings(params, mesh))
        spec, recipe = stages.plan_stage(
            "sft",
            StageConfig(steps=steps, batch_size=2, save_every=2, optim=optim),
            graphdef,
            mcfg,
            tok,
            start,
            mesh=mesh,
        )
        ctx = stages.RunContext(mesh=mesh, writer=MetricsWriter(tmp_path / "metrics.jsonl"), run_config={})
        seen = []
        stages.run_stage(
            spec, recipe, tmp_path / "sft", start, rows["sft"], ctx, on_step=lambda *_: seen.append(_live_bytes())
        )
        del start
        return seen

    fresh = run(2)  # steps 1-2, a checkpoint at step 2
    resumed = run(4)  # restores step 2, runs 3-4
    assert len(fresh) == 2 and len(resumed) == 2
    assert resumed[-1] - fresh[-1] < 0.25 * param_bytes, (resumed, fresh, param_bytes)
