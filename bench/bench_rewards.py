"""Reward throughput: the jitted array reward vs the plain-Python string reward (the published semantics),
on the same batch of sampled-like completions (B x T token ids), and their agreement.

usage: python -m bench.bench_rewards [--batch 1024] [--tokens 512] [--no-notes]
       python -m bench.bench_rewards --budgets [--batch 16] [--tokens 1024]   (cost at the 3B/7B byte budgets)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import markdown_table, record_result, timed
from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model.config import PRESETS as MODELS
from dmx_jax.rewards import paper
from dmx_jax.rewards.combine import (
    PRESETS,
    RewardConfig,
    ground_truth_arrays,
    make_reward_fn,
    reward_byte_budget,
    text_budget,
)
from dmx_jax.rewards.text_bytes import QWEN2_5_LONGEST_TOKEN_BYTES, token_bytes_table
from experiments.configs import PRESETS as RUNS


def completions(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """Completions in the paper's format with varied quality, and ground truths of the three kinds."""
    words = [
        "the",
        "left",
        "right",
        "lung",
        "base",
        "pleural",
        "effusion",
        "small",
        "moderate",
        "opacity",
        "heart",
        "no",
        "pneumothorax",
        "edema",
    ]
    answers = [
        "yes",
        "no",
        "left",
        "pleural effusion|edema",
        "cardiomegaly|atelectasis|edema",
        "small left pleural effusion with adjacent basal atelectasis",
    ]
    texts, gts = [], []
    for _ in range(n):
        gt = rng.choice(answers)
        steps = []
        for k in range(rng.randint(1, 8)):
            box = [rng.randint(0, 600) for _ in range(4)]
            steps.append(f"{k + 1}. " + " ".join(rng.choice(words) for _ in range(rng.randint(4, 30))) + f" {box}")
        answer = gt if rng.random() < 0.4 else " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        texts.append(f"<think>{'; '.join(steps)}</think>\nThe answer is: \\boxed{{{answer}}}")
        gts.append(gt)
    return texts, gts


def qwen_size_table(table: dict, vocab_size: int, longest: int) -> dict:
    """The tokenizer's table padded to `vocab_size` rows and `longest` bytes per token, its last id a token of
    `longest` spaces: a stand-in with Qwen2.5's shape (the completions only use the real ids; the budget and the
    gathers see the real-size table)."""
    out = {"bytes": np.zeros((vocab_size, longest), np.uint8), "length": np.zeros((vocab_size,), np.int32)}
    v, k = table["bytes"].shape
    out["bytes"][:v, :k], out["length"][:v] = table["bytes"], table["length"]
    out["bytes"][-1], out["length"][-1] = ord(" "), longest
    return out


def time_reward(fn, cfg, ids, mask, gts) -> tuple[dict, float, float]:
    """(the reward dict, seconds of the first call: compile + run, seconds per later call) of a jitted reward on
    one batch whose prompts all carry the same truth box."""
    truth = jax.tree.map(jax.numpy.asarray, ground_truth_arrays(gts, [[(10, 10, 200, 200)]] * len(gts), cfg))
    ids_d, mask_d = jax.numpy.asarray(ids), jax.numpy.asarray(mask)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(ids_d, mask_d, truth))
    compile_s = time.perf_counter() - t0
    return out, compile_s, timed(lambda: jax.block_until_ready(fn(ids_d, mask_d, truth)), warmup=0, iters=3)


def budgets(args, tok, ids, mask, gts):
    """ms per completion of the jitted reward at the byte budgets the scaled presets derive, uncapped and capped."""
    run = RUNS["qwen2_5_vl_7b"]().rl
    table = qwen_size_table(
        token_bytes_table(tok, tok.vocab_size), MODELS["qwen2_5_vl_7b"]().text.vocab_size, QWEN2_5_LONGEST_TOKEN_BYTES
    )
    rows = []
    for name in ("paper", "grounded"):
        for per_token, answer in (
            (None, None),
            (None, run.reward_answer_bytes),
            (run.reward_bytes_per_token, run.reward_answer_bytes),
        ):
            cfg = RewardConfig(**{**PRESETS[name].__dict__, "bytes_per_token": per_token, "answer_bytes": answer})
            out, compile_s, s = time_reward(make_reward_fn(cfg, table, max_new_tokens=args.tokens), cfg, ids, mask, gts)
            budget = text_budget(cfg, table, args.tokens)
            rows.append(
                [
                    name,
                    f"{args.batch}x{args.tokens}",
                    f"{budget:,}",
                    "completion" if answer is None else f"{answer:,}",
                    f"{s * 1e3 / args.batch:,.1f}",
                    f"{compile_s:.0f} s",
                    f"{float(np.mean(np.asarray(out['truncated']))):.3f}",
                    f"{float(np.mean(np.asarray(out['overall']))):.4f}",
                ]
            )
            print(rows[-1], flush=True)
    header = [
        "preset",
        "batch x tokens",
        "text bytes / row",
        "answer bytes",
        "CPU ms / row",
        "compile",
        "truncated",
        "mean reward",
    ]
    print(markdown_table(header, rows))
    if not args.no_notes:
        record_result(
            "Reward cost at the 3B / 7B byte budgets",
            header,
            rows,
            key_columns=4,
            note=(
                f"Token table of Qwen2.5's shape ({table['bytes'].shape[0]:,} ids x {table['bytes'].shape[1]} bytes, "
                "the longest token 128 bytes): the uncapped budget is max_new_tokens x 128. Capped rows use the "
                f"scaled presets' rl.reward_bytes_per_token={run.reward_bytes_per_token} and "
                f"rl.reward_answer_bytes={run.reward_answer_bytes}. Completions as in the section above."
            ),
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--python-rows", type=int, default=256, help="rows timed for the Python reference (scaled)")
    ap.add_argument("--byte-cap", type=int, default=None, help="cap on the decoder's byte budget")
    ap.add_argument("--no-notes", action="store_true")
    ap.add_argument("--budgets", action="store_true", help="cost at the 3B/7B presets' byte budgets instead")
    args = ap.parse_args()

    rng = random.Random(0)
    texts, gts = completions(args.batch, rng)
    tok = train_sentencepiece(texts[:300] + gts, 2048, tempfile.mkdtemp())
    ids = np.zeros((args.batch, args.tokens), np.int32)
    mask = np.zeros_like(ids)
    for i, t in enumerate(texts):
        enc = tok.encode(t)[: args.tokens]
        ids[i, : len(enc)], mask[i, : len(enc)] = enc, 1
    if args.budgets:
        return budgets(args, tok, ids, mask, gts)
    t0 = time.perf_counter()
    decoded = [tok.decode([int(x) for x, m in zip(r, mr) if m]) for r, mr in zip(ids, mask)]
    s_decode = time.perf_counter() - t0
    rows = []
    for name in ("paper", "grounded"):
        table = token_bytes_table(tok, tok.vocab_size)
        budget = reward_byte_budget(args.tokens, table, cap=args.byte_cap)
        cfg = RewardConfig(**{**PRESETS[name].__dict__, "max_text_bytes": budget, "max_answer_bytes": 128})
        out, compile_s, s_jit = time_reward(make_reward_fn(cfg, table), cfg, ids, mask, gts)
        k = min(args.python_rows, args.batch)
        for t, g in zip(decoded[:8], gts[:8]):  # warm-up: imports, rouge_score's stemmer
            paper.paper_reward(t, g)
        t0 = time.perf_counter()
        ref = [paper.paper_reward(t, g) for t, g in zip(decoded[:k], gts[:k])]
        s_py = (time.perf_counter() - t0) * args.batch / k
        agree = ""
        if name == "paper":
            got = np.asarray(out["overall"])[:k]
            want = np.array([r["overall"] for r in ref])
            rank = lambda x: np.argsort(np.argsort(x))
            agree = (
                f"max |diff| {np.abs(got - want).max():.2e} (float32), "
                f"Spearman {np.corrcoef(rank(got), rank(want))[0, 1]:.4f}"
            )
        agree += f", truncated {float(np.mean(np.asarray(out['truncated']))):.3f}, budget {budget} B"
        rows.append(
            [
                name,
                f"{args.batch}x{args.tokens}",
                f"{s_jit * 1e3:,.0f} ms",
                f"{compile_s:.1f} s",
                f"{s_py * 1e3:,.0f} + {s_decode * 1e3:,.0f} ms",
                f"{(s_py + s_decode) / s_jit:,.2f}x",
                agree,
            ]
        )
        print(rows[-1], flush=True)
    header = [
        "preset",
        "batch x tokens",
        "jitted (per call)",
        "compile",
        "Python reference (paper_reward + detokenise)",
        "Python time / jitted time",
        "agreement with the string reward",
    ]
    table = markdown_table(header, rows)
    print(table)
    if not args.no_notes:
        record_result(
            "Rewards: jitted array reward vs Python string reward",
            header,
            rows,
            key_columns=2,
            note="Python time (after a warm-up call) is measured on `--python-rows` rows and scaled to the "
            "batch; it scores the decoded strings (format regex over the text, BLEU/ROUGE over the short "
            "boxed answer); detokenising the batch on the host is timed separately. The jitted reward "
            "starts from token ids on the device. The grounded preset adds the greedy IoU terms and is "
            "compared with the same string reference.",
        )


if __name__ == "__main__":
    main()
