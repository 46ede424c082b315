"""Alignment stage: image-only targets from the generator's truth, a loss usable with make_train_step, the
tower + merger trained (and only they), their own learning rate, and the result merged back into the model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.formatting import SYSTEM_PROMPT
from data_pipelines.pipeline.align import align_rows
from data_pipelines.pipeline.encode import EncodingConfig, encode_example
from data_pipelines.schema import CHEXPERT_LABELS
from data_pipelines.synthetic import SyntheticConfig, examples
from data_pipelines.synthetic.align import align_targets
from data_pipelines.synthetic.dataset import CLASSIFICATION_PROMPTS
from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import small
from dmx_jax.model.config import tiny as tiny_model
from dmx_jax.sharding.rules import logical_axes
from dmx_jax.training.align import (
    N_OUT,
    AlignModel,
    _align_terms,
    _head_metrics,
    align_metrics,
    align_optimizer,
    label_auc,
    make_align_loss,
    merge_vision,
    stack_align_rows,
)
from dmx_jax.training.optim import OptimConfig, Trainable, make_optimizer
from dmx_jax.training.state import init_train_state
from dmx_jax.training.step import make_train_step

SCFG = SyntheticConfig(image_size=64)
PIX = dict(min_pixels=56 * 56, max_pixels=64 * 64)


def _examples(n):
    return [examples("train", i, SCFG) for i in range(n)]


def test_targets_follow_the_generator_truth():
    for ex in _examples(12):
        t = align_targets(ex)
        names = {f["name"] for f in ex.meta["findings"]}
        assert {CHEXPERT_LABELS[k] for k in np.flatnonzero(t["labels"][1:]) + 1} == names
        assert t["labels"][0] == float(not names - {"Support Devices"})
        assert (t["box_mask"][1:] == t["labels"][1:]).all()
        w = ex.image_sizes[-1][0]
        for f in ex.meta["findings"]:
            k = CHEXPERT_LABELS.index(f["name"])
            assert t["boxes"][k][0] <= f["bbox"][0] / w + 1e-6 and t["boxes"][k][2] >= f["bbox"][2] / w - 1e-6
            assert t["sides"][k].any()  # every finding lies in some half
        assert not t["sides"][t["labels"] == 0].any()


@pytest.mark.slow
def test_align_stage_trains_only_the_tower_merger_and_head_and_merges_back():
    mcfg = small()
    model = Qwen25VL(mcfg, nnx.Rngs(0))
    _, full = nnx.split(model)
    full = nnx.to_pure_dict(full)
    rows = align_rows(_examples(24), mcfg.vision, patch_budget=32, **PIX)
    assert len(rows) >= 16 and rows[0]["unit_mask"].sum() == 4 and abs(rows[0]["unit_xy"][:4]).max() <= 1
    batch = jax.tree.map(jnp.asarray, stack_align_rows(rows[:8]))
    amodel = AlignModel(model, nnx.Rngs(1))
    graphdef, state = nnx.split(amodel)
    params = nnx.to_pure_dict(state)
    assert set(params) == {"vision", "lm_head"}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:  # the sharding rule table knows every path
        logical_axes(path, leaf.ndim)
    tx = align_optimizer(OptimConfig(learning_rate=2e-3, warmup_steps=0, schedule="constant"), head_lr=1e-2)
    st = init_train_state(params, tx)
    step = jax.jit(make_train_step(graphdef, make_align_loss(), tx))
    losses = []
    for _ in range(25):
        st, m = step(st, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.6 * losses[0], losses[::5]  # fits a fixed batch: gradients reach the tower
    assert float(m["tokens"]) == 8 and {"align/label_bce", "align/side_bce", "align/box_l1"} <= set(m)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), params["vision"], st.params["vision"])
    assert min(jax.tree.leaves(moved)) >= 0 and max(jax.tree.leaves(moved)) > 1e-4
    new = merge_vision(full, st.params)
    assert new["text"] is full["text"] and new["vision"] is st.params["vision"]
    nnx.update(model, new)  # the merged params fit the full model
    ev = align_metrics(graphdef, st.params, stack_align_rows(rows[:8]))
    assert ev["label_acc"] > 0.8 and 0 <= ev["box_l1"] < 0.5


def test_learning_rates_of_tower_and_head_are_separate():
    params = {"vision": {"w": jnp.ones(3)}, "lm_head": {"kernel": jnp.ones(3)}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = align_optimizer(OptimConfig(learning_rate=0.0, warmup_steps=0, schedule="constant"), head_lr=1e-2)
    upd, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(upd["vision"]["w"]).max()) == 0 and float(jnp.abs(upd["lm_head"]["kernel"]).max()) > 1e-3
    # SFT variant: params["vision"] frozen, the rest at cfg's
    full = {"vision": {"w": jnp.ones(3)}, "text": {"w": jnp.ones(3)}}
    tx = make_optimizer(
        OptimConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", clip_norm=0),
        trainable=Trainable(frozen=("vision",)),
    )
    upd, _ = tx.update(jax.tree.map(jnp.ones_like, full), tx.init(full), full)
    assert float(jnp.abs(upd["vision"]["w"]).max()) == 0 and float(jnp.abs(upd["text"]["w"]).max()) > 0.05


def test_decoder_readout_trains_the_decoder_on_the_prompt_rows_and_merges_it_back(tmp_path):
    """align.decoder_readout: the text decoder runs over each study's prompt row and a second head reads the
    targets at the last prompt position; gradients reach the decoder, merge_vision takes it along."""
    tok = train_sentencepiece(
        [CLASSIFICATION_PROMPTS[0], SYSTEM_PROMPT, "system\n", "user\n", "assistant\n"], 300, tmp_path
    )
    base = tiny_model()
    mcfg = base.replace(
        text=dataclasses.replace(base.text, vocab_size=tok.vocab_size),
        image_token_id=tok.image_pad_id,
        vision_start_token_id=tok.vision_start_id,
        vision_end_token_id=tok.vision_end_id,
        video_token_id=tok.vocab_size - 1,
        bos_token_id=tok.im_start_id,
        eos_token_id=tok.im_end_id,
        pad_token_id=tok.pad_id,
    )
    enc = EncodingConfig(vision=mcfg.vision, prompt_only=True, **PIX)

    def prompt_row(ex):
        one = dataclasses.replace(ex, prompt=CLASSIFICATION_PROMPTS[0], task="classification")
        return encode_example(one, tok, enc, seq_len=160, patch_budget=32)

    rows = align_rows(_examples(10), mcfg.vision, patch_budget=32, prompt_row=prompt_row, **PIX)
    batch = jax.tree.map(jnp.asarray, stack_align_rows(rows[:6]))
    assert batch["input_ids"].shape == (6, 160) and int(batch["attention_mask"][:, -1].min()) == 1  # left-padded
    model = Qwen25VL(mcfg, nnx.Rngs(0))
    full = nnx.to_pure_dict(nnx.split(model)[1])
    graphdef, state = nnx.split(AlignModel(model, nnx.Rngs(1), decoder_readout=True))
    params = nnx.to_pure_dict(state)
    assert set(params) == {"vision", "lm_head", "text", "align_readout"}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        logical_axes(path, leaf.ndim)
    tx = align_optimizer(OptimConfig(learning_rate=3e-3, warmup_steps=0, schedule="constant"), head_lr=1e-2)
    st = init_train_state(params, tx)
    step = jax.jit(make_train_step(graphdef, make_align_loss(), tx))
    first = None
    for _ in range(20):
        st, m = step(st, batch)
        first = first if first is not None else float(m["align/decoder_label_bce"])
    assert float(m["align/decoder_label_bce"]) < 0.7 * first, (first, float(m["align/decoder_label_bce"]))
    moved = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), params["text"]["layers"], st.params["text"]["layers"]
    )
    assert max(jax.tree.leaves(moved)) > 1e-4
    new = merge_vision(full, st.params)
    assert new["text"] is st.params["text"] and new["vision"] is st.params["vision"]
    assert new["lm_head"] is full["lm_head"]
    ev = align_metrics(graphdef, st.params, stack_align_rows(rows[:6]))
    assert {"label_acc", "decoder_label_acc", "decoder_side_acc", "decoder_box_l1"} <= set(ev)


def test_label_auc_equals_the_pairwise_count_with_ties_half():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(40, 5)), 1)  # rounded: ties within and across classes
    truth = (rng.random((40, 5)) < 0.3).astype(np.float32)
    truth[:, 4] = 0  # one class only -> NaN
    got = label_auc(scores, truth)
    for k in range(4):
        pos, neg = scores[truth[:, k] > 0.5, k], scores[truth[:, k] < 0.5, k]
        want = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
        assert got[k] == pytest.approx(want, abs=1e-12)
    assert np.isnan(got[4])
    assert label_auc(truth[:, :4] * 2 - 1, truth[:, :4]).tolist() == [1.0] * 4


def test_side_loss_counts_only_present_findings():
    """An absent finding has no side: its side target must not move the loss (else the head learns to answer
    'neither half' for every finding); a present finding's side target must."""
    rng = np.random.default_rng(0)
    out = jnp.asarray(rng.normal(size=(3, N_OUT)), jnp.float32)
    box_mask = np.zeros((3, 14), np.float32)
    box_mask[0, 2] = box_mask[1, [3, 5]] = 1.0
    batch = {
        "labels": jnp.asarray(box_mask),
        "sides": jnp.zeros((3, 14, 2)),
        "boxes": jnp.full((3, 14, 4), 0.5),
        "box_mask": jnp.asarray(box_mask),
    }
    base, rows, aux = _align_terms(out, batch, 1.0, 1.0)
    absent = np.zeros((3, 14, 2), np.float32)
    absent[:, 7] = 1.0  # finding 7 is absent everywhere
    same, _, _ = _align_terms(out, {**batch, "sides": jnp.asarray(absent)}, 1.0, 1.0)
    present = np.zeros((3, 14, 2), np.float32)
    present[0, 2, 0] = 1.0
    moved, _, _ = _align_terms(out, {**batch, "sides": jnp.asarray(present)}, 1.0, 1.0)
    assert float(rows) == 3 and abs(float(same) - float(base)) < 1e-6 and abs(float(moved) - float(base)) > 1e-3
    # the reported side BCE is the mean over rows with a finding (2 of 3), as for the box L1
    sides = np.asarray(out[:, 14:42]).reshape(3, 14, 2)
    bce = np.logaddexp(0, sides)  # BCE of a logit against target 0
    want = (bce[0, 2].mean() + bce[1, [3, 5]].mean(-1).mean()) / 2
    assert abs(float(aux["align/side_bce"]) - want) < 1e-5


def test_head_metrics_name_each_findings_auc():
    """label_auc_by_finding: each CheXpert label with both classes present, keyed by name, equal to label_auc's
    column; a label with one class is left out; label_auc is their mean."""
    rng = np.random.default_rng(1)
    out = rng.normal(size=(30, N_OUT)).astype(np.float32)
    truth = (rng.random((30, 14)) < 0.4).astype(np.float32)
    truth[:, 5] = 0  # one class only: no AUC
    batch = {
        "labels": truth,
        "sides": np.zeros((30, 14, 2), np.float32),
        "boxes": np.zeros((30, 14, 4), np.float32),
        "box_mask": truth,
    }
    got = _head_metrics(jnp.asarray(out), batch)["label_auc_by_finding"]
    want = label_auc(out[:, :14], truth)
    assert list(got) == [n for k, n in enumerate(CHEXPERT_LABELS) if k != 5]
    assert [got[n] for n in got] == pytest.approx([a for k, a in enumerate(want) if k != 5], abs=1e-12)
    assert _head_metrics(jnp.asarray(out), batch)["label_auc"] == pytest.approx(np.mean(list(got.values())))
