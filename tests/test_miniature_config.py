"""The miniature's data and optimizer knobs: question-family weights shape the train split only, and a stage's
vision_lr reaches the vision tower (and nothing else), frozen parameters neither move nor hold optimizer state."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dmx_jax.model import Qwen25VL
from dmx_jax.model.config import tiny as tiny_model
from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.sharding.rules import path_to_str
from dmx_jax.training.optim import OptimConfig
from dmx_jax.training.sft import make_sft_loss
from experiments.configs import StageConfig, tiny
from experiments.datasets import synthetic_examples
from experiments.overrides import ConfigError
from experiments.stages import plan_stage


def _examples(weights):
    cfg = tiny()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, train_examples=60, vqa_family_weights=weights),
        eval=dataclasses.replace(cfg.eval, examples=30),
    )
    return synthetic_examples(cfg)


def test_family_weights_shape_the_train_split_and_leave_the_test_split_alone():
    train_u, test_u = _examples(())
    train_w, test_w = _examples((("presence", 50.0),))
    assert [(e.example_id, e.prompt, e.target) for e in test_w] == [(e.example_id, e.prompt, e.target) for e in test_u]
    fam = lambda exs: [e.question_type for e in exs if e.task == "vqa"]
    share_w = np.mean([q == "presence" for q in fam(train_w)])
    share_u = np.mean([q == "presence" for q in fam(train_u)])
    assert share_w > 0.7 > share_u, (share_w, share_u)


def test_stage_vision_lr_moves_only_the_tower_at_its_rate():
    params = {
        "vision": {"blocks": {"kernel": jnp.zeros((3, 4))}, "merger": {"scale": jnp.zeros(4)}},
        "text": {"layers": {"kernel": jnp.zeros((4, 4))}},
        "lm_head": {"kernel": jnp.zeros((4, 5))},
    }
    optim = OptimConfig(learning_rate=1e-3, warmup_steps=0, schedule="constant", clip_norm=0.0)
    _, recipe = plan_stage(
        "sft",
        StageConfig(optim=optim, vision_lr=1e-5),
        None,
        None,
        None,
        params,
        mesh=make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1]),
    )
    tx = recipe.make_tx(optim)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        want = 1e-5 if path[0].key == "vision" else 1e-3  # Adam's first step: lr x sign(grad)
        np.testing.assert_allclose(np.abs(np.asarray(u)), want, rtol=1e-3, err_msg=jax.tree_util.keystr(path))


def test_row_weighted_sft_loss_is_the_mean_of_per_row_token_means():
    """loss_weighting="row": a 2-token answer weighs as much as a 9-token one (the mean of each row's token-mean
    NLL, computed row by row with the token-weighted loss)."""
    model = Qwen25VL(tiny_model(), nnx.Rngs(0))
    rng = np.random.default_rng(0)
    b, t = 3, 16
    ids = jnp.asarray(rng.integers(3, 900, (b, t)), jnp.int32)
    mask = np.zeros((b, t), np.int32)
    mask[0, 5:7], mask[1, 4:13], mask[2, 10:16] = 1, 1, 1  # answers of 2, 9 and 6 tokens
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, 3, t))
    batch = {
        "input_ids": ids,
        "attention_mask": jnp.ones((b, t), jnp.int32),
        "loss_mask": jnp.asarray(mask),
        "positions": pos,
    }
    s_row, c_row, _ = make_sft_loss(per_row=True)(model, batch)
    s_tok, c_tok, _ = make_sft_loss()(model, batch)
    means = []
    for i in range(b):
        s, c, _ = make_sft_loss()(model, jax.tree.map(lambda x, i=i: x[i : i + 1], batch))
        means.append(float(s) / float(c))
    assert abs(float(c_row) - b) < 1e-5 and float(c_tok) == 2 + 9 + 6
    np.testing.assert_allclose(float(s_row) / float(c_row), np.mean(means), rtol=1e-5)
    assert abs(float(s_tok) / float(c_tok) - np.mean(means)) > 1e-4  # the two weightings differ here


def _named(tree) -> list:
    return [(_path(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def test_frozen_parameters_keep_no_state_stay_put_and_leave_the_clipping_norm():
    """StageConfig.frozen (and vision_lr=0, which freezes "vision"): the optimizer holds no moments for frozen
    leaves, they never move, and global-norm clipping sees the trained gradients only (a huge gradient on a frozen
    leaf does not shrink the others' step). A prefix naming no parameter is a one-line config error."""
    params = {
        "vision": {"blocks": {"kernel": jnp.ones((3, 4))}, "merger": {"scale": jnp.ones(4)}},
        "text": {"layers": {"kernel": jnp.ones((4, 4))}},
        "lm_head": {"kernel": jnp.ones((4, 5))},
    }
    optim = OptimConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", clip_norm=1.0)
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    cases = [
        (StageConfig(optim=optim, frozen=("vision.merger",)), {"vision.merger.scale"}),
        (StageConfig(optim=optim, vision_lr=0.0), {"vision.blocks.kernel", "vision.merger.scale"}),
    ]
    for stage, frozen in cases:
        _, recipe = plan_stage("sft", stage, None, None, None, params, mesh=mesh)
        tx = recipe.make_tx(optim)
        opt_state = tx.init(params)
        trained = sum(x.size for name, x in _named(params) if name not in frozen)
        assert sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim) == 2 * trained  # Adam mu, nu only
        grads = jax.tree.map(jnp.ones_like, params)
        big = jax.tree_util.tree_map_with_path(lambda p, g: g * 1e6 if _path(p) in frozen else g, grads)
        small_upd, _ = tx.update(grads, opt_state, params)
        big_upd, _ = tx.update(big, opt_state, params)
        for (name, a), (_, b) in zip(_named(small_upd), _named(big_upd)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, err_msg=name)
            assert (float(jnp.abs(a).max()) == 0.0) == (name in frozen), name
    with pytest.raises(ConfigError, match="visionx"):
        plan_stage("sft", StageConfig(optim=optim, frozen=("visionx",)), None, None, None, params, mesh=mesh)


def _path(path) -> str:
    return path_to_str(path)
