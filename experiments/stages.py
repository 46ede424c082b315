"""Stage runners for the experiment driver: SFT-style stages and GRPO, each checkpointed and resumable."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines.formatting import parse_answer
from dmx_jax.eval import box_iou
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


def place_batch(arrays: dict, mesh) -> dict:
    """A host batch (identical on every process) -> global arrays sharded over the mesh's batch axes.

    Each process contributes only its own rows (process_slice), so the same code runs on one CPU and on a
    multi-host TPU pod.
    """
    from dmx_jax.sharding import global_array, process_slice
    from dmx_jax.sharding.rules import batch_spec
    rows = process_slice(len(arrays["input_ids"]))
    return jax.tree.map(lambda x: global_array(np.asarray(x)[rows], mesh, batch_spec(np.ndim(x))), arrays)


def run_supervised(stage: str, stage_dir: Path, graphdef, params, rows, cfg_stage, *, seed: int, mesh,
                   writer: MetricsWriter, config_json: dict):
    stage_dir.mkdir(parents=True, exist_ok=True)
    tx = make_optimizer(cfg_stage.optim)
    state = init_train_state(params, tx, seed=seed)
    sh = state_shardings(state, mesh)
    ck = Checkpointer(stage_dir / "ckpt", save_every=cfg_stage.save_every, keep=2)
    data = batches(rows, cfg_stage.batch_size, seed=seed)
    state, start = start_or_resume(state, sh, ck, data)
    step = jax.jit(make_train_step(graphdef, make_sft_loss(), tx), donate_argnums=(0,))

    def strip(arrays):
        return place_batch({k: v for k, v in arrays.items() if k != "deltas"}, mesh)

    state, summary = train_loop(step, state, data, num_steps=cfg_stage.steps, checkpointer=ck, writer=writer,
                                config=config_json, place_batch=strip, stage=stage)
    if summary["preempted"]:
        ck.close()
        raise SystemExit(f"[{stage}] stopped by signal at step {int(state.step)}; rerun the same command to resume")
    _finish(stage_dir, ck, state, {"stage": stage, "steps": int(state.step), "resumed_from": start,
                                   "final_loss": summary["last_metrics"].get("loss")})
    return state.params


def grounded_reward(texts: list[str], rows: list[dict]) -> dict[str, np.ndarray]:
    """Host reward for the tiny run: format (think + box cited + boxed answer), answer match, box IoU."""
    fmt, acc, iou = [], [], []
    for text, r in zip(texts, rows):
        has_think = "<think>" in text and "</think>" in text and "\\boxed{" in text
        answer = parse_answer(text).strip().lower()
        target = str(r["target"]).strip().lower()
        if "|" in target:
            a, t = {x.strip() for x in answer.split("|")}, {x.strip() for x in target.split("|")}
            inter = len(a & t)
            acc.append(0.0 if not inter else 2 * inter / (len(a) + len(t)))
        else:
            acc.append(float(answer == target))
        from experiments.evaluate import boxes_in
        cited = boxes_in(text.split("</think>")[0]) if "<think>" in text else []
        if r["boxes"] and cited:
            m = np.asarray([[box_iou(c, g) for g in r["boxes"]] for c in cited])
            iou.append(float(m.max(axis=0).mean()))
        else:
            iou.append(0.0)
        fmt.append(float(has_think and bool(cited)))
    fmt, acc, iou = map(np.asarray, (fmt, acc, iou))
    return {"overall": 0.1 * fmt + 0.7 * acc + 0.2 * iou, "format": fmt, "accuracy": acc, "box_iou": iou}


def run_grpo(stage_dir: Path, graphdef, params, prompt_rows, rl_cfg, tokenizer, *, seed: int, mesh,
             writer: MetricsWriter, config_json: dict):
    stage_dir.mkdir(parents=True, exist_ok=True)
    algo = rl_cfg.algo
    tx = make_optimizer(rl_cfg.optim)
    state = init_train_state(params, tx, seed=seed)
    sh = state_shardings(state, mesh)
    ck = Checkpointer(stage_dir / "ckpt", save_every=rl_cfg.save_every, keep=2)
    data = batches(prompt_rows, rl_cfg.prompts_per_step, seed=seed)
    state, start = start_or_resume(state, sh, ck, data)
    current_rows: list[dict] = []

    def reward_fn(tokens, cmask, rep):
        toks, m = np.asarray(tokens), np.asarray(cmask)
        texts = [tokenizer.decode([int(t) for t, k in zip(toks[i], m[i]) if k and t != tokenizer.im_end_id])
                 for i in range(toks.shape[0])]
        rows = [r for r in current_rows for _ in range(algo.group_size)]
        return {k: jnp.asarray(v, jnp.float32) for k, v in grounded_reward(texts, rows).items()}

    learner = GRPOLearner(graphdef, algo, tx,
                          sample_fn=make_sample_fn(graphdef, algo, stop_token_ids=(tokenizer.im_end_id,),
                                                   pad_id=tokenizer.pad_id),
                          reward_fn=reward_fn, logprob_fn=completion_logprobs, ref_params=params, seed=seed)

    class PromptData:
        def __next__(self):
            arrays, meta = next(data)
            current_rows[:] = meta["rows"]
            return {k: v for k, v in arrays.items() if k not in ("loss_mask",)}, meta

        get_state, set_state = data.get_state, data.set_state

    state, summary = train_loop(learner.step, state, PromptData(), num_steps=rl_cfg.steps, checkpointer=ck,
                                writer=writer, config=config_json, stage="grpo")
    if summary["preempted"]:
        ck.close()
        raise SystemExit(f"[grpo] stopped by signal at step {int(state.step)}; rerun the same command to resume")
    _finish(stage_dir, ck, state, {"stage": "grpo", "steps": int(state.step), "resumed_from": start,
                                   "final_reward": summary["last_metrics"].get("reward/overall")})
    return state.params
