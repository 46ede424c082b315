"""Is the synthetic benchmark learnable? The `small` dmx-jax model, from scratch, SFT on finding-presence
questions ("Is there a pleural effusion?", answers balanced yes/no) for a CPU-minute, scored on held-out ones.

Reports held-out exact-match accuracy with a 95% bootstrap CI next to chance (0.5, balanced answers) and
the majority-answer baseline of the training set. The presence family needs the picture: the question
names a finding, so text alone sits at chance.

usage: python -m bench.bench_learnability [--train-studies 6000] [--steps 300] [--no-notes]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import append_notes, markdown_table  # noqa: E402


def presence_examples(split: str, n_studies: int, scfg) -> list:
    from data_pipelines.synthetic import examples
    out = [examples(split, i, scfg, task="vqa") for i in range(n_studies)]
    return [e for e in out if e.question_type == "presence"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-studies", type=int, default=6000)
    ap.add_argument("--test-studies", type=int, default=1800)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()
    from flax import nnx

    from data_pipelines.synthetic import SyntheticConfig
    from dmx_jax.eval.bootstrap import bootstrap_ci
    from dmx_jax.model import Qwen25VL
    from dmx_jax.sharding import MeshConfig, make_mesh
    from dmx_jax.training.loop import MetricsWriter
    from experiments.configs import OptimConfig, StageConfig, tiny
    from experiments.data import collate
    from experiments.datasets import build_tokenizer, encode_all, model_config_for
    from experiments.evaluate import generate_texts
    from experiments.stages import run_supervised
    from data_pipelines.formatting import parse_answer

    cfg = tiny()
    scfg = SyntheticConfig(image_size=cfg.data.image_size, seed=cfg.seed)
    t0 = time.perf_counter()
    train_ex = presence_examples("train", args.train_studies, scfg)
    test_ex = presence_examples("test", args.test_studies, scfg)
    t_data = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="bench_learn_"))
    tok = build_tokenizer(train_ex, cfg.data.vocab_size, work / "tok")
    mcfg = model_config_for(cfg, tok)
    cache: dict = {}
    rows = encode_all(train_ex, tok, mcfg, cfg, cfg.data.max_seq_len, cache, reasoning=False)
    prompts = encode_all(test_ex, tok, mcfg, cfg, cfg.data.prompt_len, cache, reasoning=False, prompt_only=True)
    graphdef, state = nnx.split(Qwen25VL(mcfg, nnx.Rngs(0)))
    stage = StageConfig(steps=args.steps, batch_size=16, save_every=10 ** 6,
                        optim=OptimConfig(learning_rate=2e-3, warmup_steps=20, total_steps=args.steps))
    t0 = time.perf_counter()
    params = run_supervised("sft", work / "sft", graphdef, nnx.to_pure_dict(state), rows, stage, seed=0,
                            mesh=make_mesh(MeshConfig(1, 1, 1)), writer=MetricsWriter(None), config_json={})
    t_train = time.perf_counter() - t0
    arrays, meta = collate(prompts)
    texts = generate_texts(graphdef, params, arrays, tok, max_new_tokens=8)
    truth = [r["target"].strip().lower() for r in meta["rows"]]
    correct = np.array([parse_answer(t).strip().lower() == y for t, y in zip(texts, truth)], np.float64)
    lo, hi = bootstrap_ci(correct, n=1000)
    train_yes = np.mean([e.target.strip().lower() == "yes" for e in train_ex])
    majority = max(np.mean([y == "yes" for y in truth]), np.mean([y == "no" for y in truth]))
    table = markdown_table(
        ["train questions", "held-out", "SFT steps (batch 16)", "train wall s", "accuracy [95% CI]",
         "chance", "majority answer (held-out)"],
        [[len(rows), len(correct), args.steps, f"{t_train:.0f}", f"{correct.mean():.3f} [{lo:.3f}, {hi:.3f}]",
          "0.500", f"{majority:.3f}"]])
    head = (f"model `small` from scratch, finding-presence VQA only; train answers {train_yes:.0%} yes; "
            f"rendering {len(train_ex) + len(test_ex)} questions took {t_data:.0f} s")
    print(head + "\n" + table)
    if not args.no_notes:
        append_notes("Benchmark: synthetic benchmark learnability (finding presence)", head + ".\n\n" + table)


if __name__ == "__main__":
    main()
