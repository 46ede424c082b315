"""Stage runners for the experiment driver: SFT-style stages and GRPO, each checkpointed and resumable."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dmx_jax.perf.flops import batch_train_flops
from dmx_jax.rewards.combine import PRESETS as REWARD_PRESETS
from dmx_jax.rewards.combine import ground_truth_arrays, make_reward_fn
from dmx_jax.rewards.text_bytes import token_bytes_table
from dmx_jax.training.checkpoint import Checkpointer
from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.loop import MetricsWriter, train_loop
from dmx_jax.training.optim import make_optimizer
from dmx_jax.training.resume import start_or_resume
from dmx_jax.training.rl_vlm import completion_logprobs, make_sample_fn
from dmx_jax.training.sft import make_sft_loss
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step, state_shardings
from experiments.data import batches

DONE = "DONE.json"


def stage_done(stage_dir: Path) -> dict | None:
    f = stage_dir / DONE
    return json.loads(f.read_text()) if f.is_file() else None


def _finish(stage_dir: Path, ck: Checkpointer, state, info: dict) -> dict:
    """Last full checkpoint, the final params on their own (what the next stage loads), then the DONE marker."""
    import orbax.checkpoint as ocp
    ck.save(int(state.step), state, force=True)
    ck.close()
    with ocp.StandardCheckpointer() as saver:
        saver.save((stage_dir / "final_params").absolute(), state.params, force=True)
    (stage_dir / DONE).write_text(json.dumps(info))
    return info


def load_stage_params(stage_dir: Path, params_like, mesh):
    """Final params of a finished stage, placed like `params_like` (their shardings under `mesh`)."""
    import orbax.checkpoint as ocp
    from dmx_jax.sharding.rules import tree_shardings
    shard = tree_shardings(params_like, mesh)
    target = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params_like, shard)
    with ocp.StandardCheckpointer() as loader:
        return loader.restore((stage_dir / "final_params").absolute(), target)


def place_batch(arrays: dict, mesh, per_process: bool = False) -> dict:
    """A host batch -> global arrays sharded over the mesh's batch axes. per_process=False: the batch is
    identical on every process and each contributes its slice of rows; True: each process holds only its
    own rows (the grain pipeline's shards). The same code runs on one CPU and on a multi-host TPU pod."""
    from dmx_jax.sharding import global_array, process_slice
    from dmx_jax.sharding.rules import batch_spec
    rows = slice(None) if per_process else process_slice(len(arrays["input_ids"]))
    return jax.tree.map(lambda x: global_array(np.asarray(x)[rows], mesh, batch_spec(np.ndim(x))), arrays)


def run_supervised(stage: str, stage_dir: Path, graphdef, params, rows, cfg_stage, *, seed: int, mesh,
                   writer: MetricsWriter, config_json: dict, model_cfg=None):
    stage_dir.mkdir(parents=True, exist_ok=True)
    tx = make_optimizer(cfg_stage.optim)
    state = init_train_state(params, tx, seed=seed)
    sh = state_shardings(state, mesh)
    ck = Checkpointer(stage_dir / "ckpt", save_every=cfg_stage.save_every, keep=2)
    data = batches(rows, cfg_stage.batch_size, seed=seed)
    state, start = start_or_resume(state, sh, ck, data)
    step = jax.jit(make_train_step(graphdef, make_sft_loss(), tx), donate_argnums=(0,))

    def strip(arrays):
        return place_batch({k: v for k, v in arrays.items() if k != "deltas"}, mesh,
                           per_process=getattr(data, "per_process", False))

    state, summary = train_loop(step, state, data, num_steps=cfg_stage.steps, checkpointer=ck, writer=writer,
                                config=config_json, place_batch=strip, stage=stage,
                                flops_fn=None if model_cfg is None else functools.partial(batch_train_flops, model_cfg))
    if summary["preempted"]:
        ck.close()
        raise SystemExit(f"[{stage}] stopped by signal at step {int(state.step)}; rerun the same command to resume")
    _finish(stage_dir, ck, state, {"stage": stage, "steps": int(state.step), "resumed_from": start,
                                   "final_loss": summary["last_metrics"].get("loss")})
    return state.params


def run_grpo(stage_dir: Path, graphdef, params, prompt_rows, rl_cfg, tokenizer, *, seed: int, mesh,
             writer: MetricsWriter, config_json: dict, vocab_size: int | None = None):
    """GRPO with the jitted reward preset `rl_cfg.reward_preset` (rewards computed on device from token ids)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    algo = rl_cfg.algo
    tx = make_optimizer(rl_cfg.optim)
    state = init_train_state(params, tx, seed=seed)
    sh = state_shardings(state, mesh)
    ck = Checkpointer(stage_dir / "ckpt", save_every=rl_cfg.save_every, keep=2)
    data = batches(prompt_rows, rl_cfg.prompts_per_step, seed=seed)
    n_rollouts, shards = rl_cfg.prompts_per_step * algo.group_size, mesh.shape["data"] * mesh.shape["fsdp"]
    if n_rollouts % shards:
        from experiments.overrides import ConfigError
        raise ConfigError(f"rl.prompts_per_step x rl.algo.group_size = {n_rollouts} rollouts per step must be "
                          f"divisible by the mesh's data x fsdp = {shards} devices (rollouts are data-parallel)")
    state, start = start_or_resume(state, sh, ck, data)
    reward_cfg = REWARD_PRESETS[rl_cfg.reward_preset]
    jitted_reward = make_reward_fn(reward_cfg, token_bytes_table(tokenizer, vocab_size or tokenizer.vocab_size))

    def reward_fn(tokens, cmask, rep):          # all on device: ids -> bytes -> parse -> scores
        return jitted_reward(tokens, cmask, rep["reward_truth"])

    learner = GRPOLearner(graphdef, algo, tx,
                          sample_fn=make_sample_fn(graphdef, algo, stop_token_ids=(tokenizer.im_end_id,),
                                                   pad_id=tokenizer.pad_id),
                          reward_fn=reward_fn, logprob_fn=completion_logprobs, ref_params=params, seed=seed,
                          place=lambda rep: place_batch(rep, mesh, per_process=getattr(data, "per_process", False)))

    class PromptData:
        def __next__(self):
            arrays, meta = next(data)
            truth = ground_truth_arrays([r["target"] for r in meta["rows"]], [r["boxes"] for r in meta["rows"]],
                                        reward_cfg)
            return {**{k: v for k, v in arrays.items() if k not in ("loss_mask",)}, "reward_truth": truth}, meta

        get_state, set_state = data.get_state, data.set_state

    state, summary = train_loop(learner.step, state, PromptData(), num_steps=rl_cfg.steps, checkpointer=ck,
                                writer=writer, config=config_json, stage="grpo")
    if summary["preempted"]:
        ck.close()
        raise SystemExit(f"[grpo] stopped by signal at step {int(state.step)}; rerun the same command to resume")
    _finish(stage_dir, ck, state, {"stage": "grpo", "steps": int(state.step), "resumed_from": start,
                                   "final_reward": summary["last_metrics"].get("reward/overall")})
    return state.params
