"""The end-to-end experiment: build data, run the three stages, evaluate, compare, export, summarise."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model import Qwen25VL, preset
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.loop import MetricsWriter
from experiments.data import encode
from experiments.evaluate import evaluate_stage
from experiments.stages import load_stage_params, run_grpo, run_supervised, stage_done

TRAIN_TASKS = ("findings", "impression", "vqa", "grounding", "referring", "classification")


def _examples(split: str, n: int, image_size: int, seed: int):
    from data_pipelines.synthetic import SyntheticConfig, examples
    scfg = SyntheticConfig(image_size=image_size, seed=seed)
    return [examples(split, i, scfg) for i in range(n)]


def build_tokenizer(train_examples, vocab_size: int, cache_dir: Path):
    corpus = []
    for e in train_examples:
        corpus += [e.prompt, e.target, e.meta.get("reasoning", "")]
    from data_pipelines.formatting import SYSTEM_PROMPT, reasoning_suffix
    corpus += [SYSTEM_PROMPT, reasoning_suffix(), "system\n", "user\n", "assistant\n"]
    return train_sentencepiece(corpus, vocab_size, cache_dir)


def model_config_for(cfg, tok):
    """The preset with the tokenizer's vocabulary and special ids (tiny run); real checkpoints keep theirs."""
    mcfg = preset(cfg.model)
    if cfg.hf_checkpoint is None and cfg.model == "tiny":
        text = dataclasses.replace(mcfg.text, vocab_size=tok.vocab_size)
        mcfg = dataclasses.replace(mcfg, text=text, image_token_id=tok.image_pad_id, vision_start_token_id=tok.vision_start_id,
                                   vision_end_token_id=tok.vision_end_id, video_token_id=tok.vocab_size - 1,
                                   bos_token_id=tok.im_start_id, eos_token_id=tok.im_end_id, pad_token_id=tok.pad_id)
    return dataclasses.replace(mcfg, dtype=cfg.dtype)


def _encode_all(examples, tok, mcfg, cfg, seq_len: int, **kw):
    d = cfg.data
    return [encode(e, tok, mcfg, seq_len=seq_len, patch_budget=_patch_budget(cfg), min_pixels=d.min_pixels,
                   max_pixels=d.max_pixels, **kw) for e in examples]


def _patch_budget(cfg) -> int:
    side = int(np.sqrt(cfg.data.max_pixels)) // 28 * 28 + 28
    return (side // 14) ** 2


def run_pipeline(cfg, run_dir: Path, stages=("sft", "cold_start", "grpo")) -> str:
    cfg_json = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    (run_dir / "config.json").write_text(json.dumps(cfg_json, indent=2))
    writer = MetricsWriter(run_dir / "metrics.jsonl")
    mesh = make_mesh(MeshConfig(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    if cfg.data.source != "synthetic":
        raise NotImplementedError("this driver builds the synthetic benchmark; real-data runs use "
                                  "data_pipelines.adapters (see README) once the grain pipeline lands")
    print(f"[data] rendering {cfg.data.train_examples} train + {cfg.eval.examples} test synthetic studies", flush=True)
    train_ex = [e for e in _examples("train", cfg.data.train_examples, cfg.data.image_size, cfg.seed) if e.task in TRAIN_TASKS]
    test_ex = [e for e in _examples("test", cfg.eval.examples, cfg.data.image_size, cfg.seed) if e.task in TRAIN_TASKS]
    tok = build_tokenizer(train_ex, cfg.data.vocab_size, run_dir / "tokenizer")
    mcfg = model_config_for(cfg, tok)
    d = cfg.data
    reasoning_train = [e for e in train_ex if e.task in d.reasoning_tasks]
    sft_rows = _encode_all(train_ex, tok, mcfg, cfg, d.max_seq_len, reasoning=False)
    cold_rows = _encode_all(reasoning_train, tok, mcfg, cfg, d.reasoning_seq_len, reasoning=True)
    rl_rows = _encode_all(reasoning_train, tok, mcfg, cfg, d.reasoning_prompt_len, reasoning=True, prompt_only=True)
    # evaluation: every test task with the plain prompt; the reasoning tasks also with the <think> suffix
    eval_plain = _encode_all(test_ex, tok, mcfg, cfg, d.prompt_len, reasoning=False, prompt_only=True)
    test_reasoning = [e for e in test_ex if e.task in d.reasoning_tasks]
    eval_reason = _encode_all(test_reasoning, tok, mcfg, cfg, d.reasoning_prompt_len, reasoning=True, prompt_only=True)
    print(f"[data] {len(sft_rows)} SFT rows, {len(cold_rows)} reasoning rows, {len(rl_rows)} RL prompts, "
          f"{len(eval_plain)} eval prompts; vocab {tok.vocab_size}, seq {d.max_seq_len}/{d.reasoning_seq_len}, "
          f"patch budget {_patch_budget(cfg)}", flush=True)

    model = Qwen25VL(mcfg, nnx.Rngs(cfg.seed))
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    results, outputs = {}, {}

    def arrays_of(rows):
        from experiments.data import collate
        a, _ = collate(rows)
        return a, [r["meta"] for r in rows]

    plain_group = (*arrays_of(eval_plain), cfg.eval.max_new_tokens)
    # stages trained to reason answer the reasoning tasks with <think>; reports and labels keep the plain prompt
    plain_only = [r for r in eval_plain if r["meta"]["task"] not in d.reasoning_tasks]
    reasoning_groups = [(*arrays_of(eval_reason), cfg.eval.reasoning_max_new_tokens)]
    if plain_only:
        reasoning_groups.append((*arrays_of(plain_only), cfg.eval.max_new_tokens))
    plan = [("sft", sft_rows, cfg.sft, False), ("cold_start", cold_rows, cfg.cold_start, True), ("grpo", rl_rows, cfg.rl, True)]
    for name, rows, scfg, reasoning in plan:
        if name not in stages:
            continue
        sdir = run_dir / name
        if stage_done(sdir):
            print(f"[{name}] finished earlier; loading its final parameters", flush=True)
            params = load_stage_params(sdir, params, mesh)
        elif name == "grpo":
            print(f"[grpo] {scfg.steps} steps x {scfg.prompts_per_step} prompts x G={scfg.algo.group_size}", flush=True)
            params = run_grpo(sdir, graphdef, params, rows, scfg, tok, seed=cfg.seed, mesh=mesh, writer=writer,
                              config_json=cfg_json)
        else:
            print(f"[{name}] {scfg.steps} steps, batch {scfg.batch_size}", flush=True)
            params = run_supervised(name, sdir, graphdef, params, rows, scfg, seed=cfg.seed, mesh=mesh, writer=writer,
                                    config_json=cfg_json)
        eval_file = run_dir / "eval" / f"{name}.json"
        if eval_file.is_file():
            saved = json.loads(eval_file.read_text())
            results[name], outputs[name] = saved["metrics"], saved["records"]
            continue
        groups = reasoning_groups if reasoning else [plain_group]
        print(f"[{name}] evaluating on {sum(len(g[1]) for g in groups)} held-out prompts", flush=True)
        metrics, records = evaluate_stage(graphdef, params, groups, tok, n_bootstrap=cfg.eval.bootstrap)
        results[name], outputs[name] = metrics, records
        eval_file.parent.mkdir(exist_ok=True)
        eval_file.write_text(json.dumps({"metrics": metrics, "records": records}, indent=1, default=float))
        writer.write({"step": 0, "eval_stage": name, **_flat(metrics)})
    from experiments.report import write_outputs
    return write_outputs(cfg, run_dir, graphdef, params, mcfg, results, outputs, test_ex, export=cfg.export_hf)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out
