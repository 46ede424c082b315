"""Image canary: a from-scratch `small` model, trained with the project's own SFT path (encode_example rows,
make_sft_loss, make_train_step), learns a balanced question only the image answers: which side of the image
holds a large bright blob. Guards the training image path end to end (embedding scatter, row pairing, M-RoPE
positions of image columns, masks, the vision learning rate).

Measured with this setup (batch 8, 112 px, cosine over 400 steps unless noted; first step with held-out
accuracy >= 0.95): rope_theta 1e6 / 100 / 30 stay at 0.50 for 300-400 steps at lr 1e-3 (the w-axis rotary
bands of head_dim 32 turn too little per image column); theta 10 reaches it at ~300 steps, theta 3 (the `small`
preset now) at ~100. At theta 3: lr 1e-3 constant ~100 steps (a loss spike at 200), lr 2e-3 constant ~150,
cosine over 200 steps only (lr 0.6e-3 by step 100) stayed at 0.50 through step 200."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.formatting import SYSTEM_PROMPT
from data_pipelines.pipeline.encode import EncodingConfig, encode_example
from data_pipelines.schema import Example
from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import small
from dmx_jax.training.optim import OptimConfig, make_optimizer
from dmx_jax.training.sft import make_sft_loss
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step

SIZE, SEQ, PATCHES = 112, 72, 64  # 8 x 8 patches -> 4 x 4 image tokens
QUESTION = "Which side of the image holds the large bright blob?"
SIDES = ("left", "right")
STEPS, BATCH, LR = 200, 8, 1e-3


def blob_image(rng: np.random.Generator, side: int) -> np.ndarray:
    """Dim noisy background with one large Gaussian blob centred in the left (0) or right (1) third."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx = rng.uniform(16, 40) if side == 0 else rng.uniform(72, 96)
    cy, r = rng.uniform(16, 96), rng.uniform(10, 14)
    blob = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    img = 0.15 + 0.05 * rng.standard_normal((SIZE, SIZE)) + blob
    return np.clip(img, 0, 1).astype(np.float32)


def canary_examples(split: str, n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [
        Example(
            f"canary/{split}/{i}",
            "canary",
            "vqa",
            (blob_image(rng, i % 2),),
            ((SIZE, SIZE),),
            QUESTION,
            SIDES[i % 2],
            split=split,
        )
        for i in range(n)
    ]


def stack(rows: list[dict]) -> dict:
    out = {
        k: np.stack([r[k] for r in rows])
        for k in ("input_ids", "attention_mask", "loss_mask", "positions", "pixel_values")
    }
    out["vision_inputs"] = {k: np.stack([r["vision_inputs"][k] for r in rows]) for k in rows[0]["vision_inputs"]}
    return out


@pytest.mark.slow
def test_small_model_learns_which_side_holds_the_blob(tmp_path):
    tok = train_sentencepiece([QUESTION, *SIDES, SYSTEM_PROMPT, "system\n", "user\n", "assistant\n"], 340, tmp_path)
    base = small()
    cfg = dataclasses.replace(
        base,
        text=dataclasses.replace(base.text, vocab_size=tok.vocab_size),
        image_token_id=tok.image_pad_id,
        vision_start_token_id=tok.vision_start_id,
        vision_end_token_id=tok.vision_end_id,
        video_token_id=tok.vocab_size - 1,
        bos_token_id=tok.im_start_id,
        eos_token_id=tok.im_end_id,
        pad_token_id=tok.pad_id,
    )
    enc = EncodingConfig(vision=cfg.vision, min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE)
    encode = lambda exs: stack([encode_example(e, tok, enc, seq_len=SEQ, patch_budget=PATCHES) for e in exs])
    train, test = encode(canary_examples("train", 512, 0)), encode(canary_examples("test", 200, 1))
    assert (train["input_ids"] == tok.image_pad_id).sum(1).tolist() == [16] * 512

    graphdef, state = nnx.split(Qwen25VL(cfg, nnx.Rngs(0)))
    # cosine over 2 x STEPS: the rate stays near its peak through the answer-prior plateau (~steps 30-90)
    tx = make_optimizer(OptimConfig(learning_rate=LR, warmup_steps=20, total_steps=2 * STEPS))
    st = init_train_state(nnx.to_pure_dict(state), tx, seed=0)
    step = jax.jit(make_train_step(graphdef, make_sft_loss(), tx), donate_argnums=(0,))

    @jax.jit
    def answered(params, batch):  # every answer token predicted (teacher forcing) -> [B] bool
        model = nnx.merge(graphdef, params)
        h, _ = model.hidden_states(
            batch["input_ids"],
            batch["positions"].swapaxes(0, 1),
            batch["attention_mask"],
            batch["pixel_values"],
            batch["vision_inputs"],
        )
        pred = jnp.argmax(model.logits(h)[:, :-1], -1)
        return jnp.all((pred == batch["input_ids"][:, 1:]) | (batch["loss_mask"][:, 1:] == 0), axis=1)

    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        idx = rng.integers(0, 512, BATCH)
        st, metrics = step(st, jax.tree.map(lambda x: x[idx], train))
    acc = float(np.mean(answered(st.params, test)))
    # the same prompts given the image of the opposite-side neighbour: a model reading the image flips its answer
    swapped = dict(test)
    order = np.arange(200) ^ 1  # 0<->1, 2<->3, ...: left and right images swap
    swapped["pixel_values"] = test["pixel_values"][order]
    swapped["vision_inputs"] = jax.tree.map(lambda x: x[order], test["vision_inputs"])
    acc_swapped = float(np.mean(answered(st.params, swapped)))
    assert acc >= 0.95, (acc, acc_swapped, float(metrics["loss"]))
    assert acc_swapped <= 0.05, (acc, acc_swapped)
