"""One GRPO step broken down into rollout, reward, log-prob recomputation (policy + reference) and update,
with and without group-shared prefill (the G samples of a prompt share one vision + prompt prefill).

Builds the production GRPO pieces directly (rl_vlm.make_sampler / make_policy_logprob, the jitted reward preset
(`paper` by default) over a synthetic token-byte table, GRPOLearner) on random weights of the `small` preset
or the ~0.5B shape
(Qwen2.5-0.5B text tower + a 4-block vision tower), with P prompts of one 224 px image each. An untrained policy
rarely stops early, so rollouts run to max_new_tokens; --stop-every N makes 1 in N of the vocabulary a stop id,
so completions end after ~N tokens (geometric lengths), the decode loop exits when every row has stopped and
--length-buckets 1,4 compares the log-prob passes and updates on all max_new_tokens slots against the slots cut
to the bucket holding the longest completion (GRPOConfig.length_buckets), side by side in one process. The
steps that compile (the first, and the first at each new slot count) are left out; the table is the median
over `--steps` others.

usage: python -m bench.bench_grpo_step [--model small|qwen0_5b] [--steps 3] [--prompts 4] [--group 8]
                                       [--max-new-tokens 128] [--prefill both|shared|repeated]
                                       [--reward paper|grounded|toy] [--optimizer adamw|sgd]
                                       [--ref-dtype bfloat16] [--layers N] [--stop-every N]
                                       [--length-buckets 1,4] [--notes TEXT] [--no-notes]

--layers N keeps N decoder layers of the text tower (CPU time); --notes fills the table's notes column
(e.g. what else shared the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine, markdown_table, record_result
from dmx_jax.model import Qwen25VL, rope_index, vision_inputs
from dmx_jax.model.config import ModelConfig, TextConfig, VisionConfig, small
from dmx_jax.processing import preprocess_images
from dmx_jax.rewards.combine import PRESETS, ground_truth_arrays, make_reward_fn
from dmx_jax.training.grpo import GRPOLearner
from dmx_jax.training.grpo_loss import GRPOConfig
from dmx_jax.training.rl_vlm import make_policy_logprob, make_sampler
from dmx_jax.training.rollout import Reference
from dmx_jax.training.state import init_train_state

PHASES = ("rollout", "reward", "logprob", "update")


def model_config(name: str, layers: int | None = None):
    cfg = _model_config(name)
    if layers:
        cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_hidden_layers=layers))
    return cfg


def _model_config(name: str):
    if name == "small":
        return small()
    if name == "qwen0_5b":
        v = 151936
        return ModelConfig(
            text=TextConfig(
                vocab_size=v,
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                mrope_section=(8, 12, 12),
                max_position_embeddings=4096,
            ),
            vision=VisionConfig(
                depth=4,
                hidden_size=256,
                intermediate_size=512,
                num_heads=4,
                window_size=112,
                fullatt_block_indexes=(3,),
                out_hidden_size=896,
            ),
            image_token_id=v - 3,
            video_token_id=v - 4,
            vision_start_token_id=v - 2,
            vision_end_token_id=v - 1,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    raise SystemExit(f"unknown --model {name!r} (small | qwen0_5b)")


def prompt_batch(cfg, n: int, prompt_len: int = 96, image_hw=(224, 224)) -> dict:
    """Left-padded prompts of different lengths with one image each, per-row (batch-major) image layout."""
    rng = np.random.default_rng(1)
    f = preprocess_images([rng.integers(0, 256, image_hw, dtype=np.uint8)], max_pixels=image_hw[0] * image_hw[1])
    grid = f["image_grid_thw"]
    n_img = int(grid[0].prod()) // cfg.vision.spatial_merge_size**2
    ids = np.zeros((n, prompt_len), np.int32)
    mask = np.zeros_like(ids)
    for b in range(n):
        k = prompt_len - 4 * (b % 3)
        row = rng.integers(10, min(cfg.text.vocab_size, 2000) - 10, size=k)
        row[1], row[2 + n_img] = cfg.vision_start_token_id, cfg.vision_end_token_id
        row[2 : 2 + n_img] = cfg.image_token_id
        ids[b, prompt_len - k :], mask[b, prompt_len - k :] = row, 1
    pos, deltas = [], []
    for b in range(n):
        p, d = rope_index(
            ids[b : b + 1],
            grid,
            mask[b : b + 1],
            spatial_merge_size=cfg.vision.spatial_merge_size,
            image_token_id=cfg.image_token_id,
        )
        pos.append(p[:, 0]), deltas.append(d[0])
    vin = vision_inputs(grid, cfg.vision)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "positions": np.stack(pos).astype(np.int32),
        "deltas": np.stack(deltas).astype(np.int32),
        "pixel_values": np.stack([f["pixel_values"]] * n),
        "vision_inputs": jax.tree.map(lambda x: np.stack([x] * n), vin),
    }


def toy_reward(tokens, mask, truth):
    return {"overall": jnp.mean((tokens % 7 == 0).astype(jnp.float32) * mask, axis=1)}


def reward_setup(vocab: int, n: int, preset: str = "paper"):
    """The jitted `paper` reward over a synthetic byte table (1-4 printable bytes per token) and truths."""
    rng = np.random.default_rng(0)
    length = rng.integers(1, 5, size=vocab).astype(np.int32)
    table = rng.integers(32, 127, size=(vocab, 4)).astype(np.uint8) * (np.arange(4)[None] < length[:, None])
    if preset == "toy":
        return jax.jit(toy_reward), {"answer": np.zeros((n, 1), np.uint8)}
    cfg = PRESETS[preset]
    truth = ground_truth_arrays(["no acute cardiopulmonary abnormality"] * n, [[]] * n, cfg)
    fn = make_reward_fn(cfg, {"bytes": table, "length": length})
    return fn, truth


def run(
    model: str,
    prompts: int,
    group: int,
    max_new: int,
    steps: int,
    shared: bool,
    preset: str,
    optimizer: str = "adamw",
    ref_dtype: str | None = None,
    layers: int | None = None,
    length_buckets: int = 1,
    stop_every: int = 0,
) -> dict:
    cfg = model_config(model, layers)
    graphdef, state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    algo = GRPOConfig(
        group_size=group, max_new_tokens=max_new, temperature=1.0, kl_coef=0.01, length_buckets=length_buckets
    )
    stops = (2,) if not stop_every else tuple(range(10, 10 + cfg.text.vocab_size // stop_every))
    reward, truth = reward_setup(cfg.text.vocab_size, prompts, preset)
    batch = {**prompt_batch(cfg, prompts), "reward_truth": truth}
    tx = optax.adamw(1e-6) if optimizer == "adamw" else optax.sgd(1e-6)  # sgd: no moments (host RAM)
    learner = GRPOLearner(
        graphdef,
        algo,
        tx,
        sampler=make_sampler(graphdef, algo, stop_token_ids=stops, pad_id=0, shared_prefill=shared),
        reward_fn=lambda t, m, rep: reward(t, m, rep["reward_truth"]),
        logprob=make_policy_logprob(algo, chunk_size=64),
        reference=Reference(params, dtype=ref_dtype),
    )
    st = init_train_state(params, tx)
    records, seen = [], set()
    for _ in range(4 * steps + 1):  # a step at a slot count not seen before compiles: it is not timed
        t0 = time.perf_counter()
        st, m = learner.step(st, batch)
        m["step_s"] = time.perf_counter() - t0
        if m["completion_slots"] in seen:
            records.append(m)
        seen.add(m["completion_slots"])
        if len(records) == steps:
            break
    keys = [f"time/{p}_s" for p in PHASES] + ["step_s", "completion_slots", "completion_len_mean"]
    return {k: float(np.median([r[k] for r in records])) for k in keys}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--prefill", default="both", choices=("both", "shared", "repeated"))
    ap.add_argument("--reward", default="paper", choices=("paper", "grounded", "toy"))
    ap.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    ap.add_argument("--ref-dtype", default=None, help="reference copy dtype, e.g. bfloat16")
    ap.add_argument("--layers", type=int, default=None, help="text decoder layers kept (default: the preset's)")
    ap.add_argument("--stop-every", type=int, default=0, help="1 in N token ids stops a completion (0: eos only)")
    ap.add_argument("--length-buckets", default="1", help="comma-separated GRPOConfig.length_buckets to compare")
    ap.add_argument("--notes", default="", help="the table's notes column")
    ap.add_argument("--no-notes", action="store_true")
    args = ap.parse_args()

    modes = {"both": (False, True), "shared": (True,), "repeated": (False,)}[args.prefill]
    buckets = [int(b) for b in args.length_buckets.split(",")]
    res = {
        (s, k): run(
            args.model,
            args.prompts,
            args.group,
            args.max_new_tokens,
            args.steps,
            s,
            args.reward,
            args.optimizer,
            args.ref_dtype,
            args.layers,
            k,
            args.stop_every,
        )
        for s in modes
        for k in buckets
    }
    total = model_config(args.model).text.num_hidden_layers
    label = args.model if not args.layers or args.layers == total else f"{args.model} ({args.layers} of {total} layers)"
    n = args.prompts * args.group
    stops = f"1 in {args.stop_every}" if args.stop_every else "eos"
    header = (
        ["model", "prefill", "prompts x G", "new tokens", "reward", "stops", "length buckets"]
        + ["mean length", "slots"]
        + [f"{p} ms" for p in PHASES]
        + ["step ms", "reward share", "notes"]
    )
    rows = [
        [label, "shared" if s else "repeated", f"{args.prompts} x {args.group}", args.max_new_tokens, args.reward]
        + [stops, k, f"{r['completion_len_mean']:.1f}", f"{r['completion_slots']:.0f}"]
        + [f"{r[f'time/{p}_s'] * 1e3:,.1f}" for p in PHASES]
        + [f"{r['step_s'] * 1e3:,.1f}", f"{r['time/reward_s'] / r['step_s']:.1%}", args.notes]
        for (s, k), r in res.items()
    ]
    note = (
        f"Random weights, one 224 px image per prompt, {n} rollouts, optimizer {args.optimizer}, reference dtype "
        f"{args.ref_dtype or 'as policy'}, median of {args.steps} steps that compiled nothing "
        f"({jax.devices()[0].device_kind}). `shared`: the G samples of a prompt share one vision + prompt prefill "
        "(KV cache broadcast); `repeated`: the prompt batch is repeated G times before prefill. stops `eos`: "
        "rollouts run to max_new_tokens; `1 in N`: 1 in N token ids ends a completion and decoding stops when "
        "every row has. slots: completion slots the log-prob passes and the update ran on (length buckets > 1 "
        "cut them to the bucket holding the longest completion). log-prob = pi_old recomputation + reference."
    )
    print(markdown_table(header, rows) + "\n" + note + f"\n{machine()}")
    if not args.no_notes:
        record_result("GRPO step breakdown", header, rows, note=note, key_columns=7)


if __name__ == "__main__":
    main()
