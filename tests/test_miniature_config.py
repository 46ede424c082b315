"""The miniature's data and optimizer knobs: question-family weights shape the train split only, and a stage's
vision_lr reaches the vision tower (and nothing else)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dmx_jax.sharding import MeshConfig, make_mesh
from dmx_jax.training.optim import OptimConfig
from experiments.configs import StageConfig, tiny
from experiments.datasets import synthetic_examples
from experiments.stages import plan_stage


def _examples(weights):
    cfg = tiny()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_examples=60, vqa_family_weights=weights),
                              eval=dataclasses.replace(cfg.eval, examples=30))
    return synthetic_examples(cfg)


def test_family_weights_shape_the_train_split_and_leave_the_test_split_alone():
    train_u, test_u = _examples(())
    train_w, test_w = _examples((("presence", 50.0),))
    assert [(e.example_id, e.prompt, e.target) for e in test_w] == [(e.example_id, e.prompt, e.target) for e in test_u]
    fam = lambda exs: [e.question_type for e in exs if e.task == "vqa"]  # noqa: E731
    share_w = np.mean([q == "presence" for q in fam(train_w)])
    share_u = np.mean([q == "presence" for q in fam(train_u)])
    assert share_w > 0.7 > share_u, (share_w, share_u)


def test_stage_vision_lr_moves_only_the_tower_at_its_rate():
    params = {"vision": {"blocks": {"kernel": jnp.zeros((3, 4))}, "merger": {"scale": jnp.zeros(4)}},
              "text": {"layers": {"kernel": jnp.zeros((4, 4))}}, "lm_head": {"kernel": jnp.zeros((4, 5))}}
    optim = OptimConfig(learning_rate=1e-3, warmup_steps=0, schedule="constant", clip_norm=0.0)
    _, recipe = plan_stage("sft", StageConfig(optim=optim, vision_lr=1e-5), None, None, None, params,
                           mesh=make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1]))
    tx = recipe.make_tx(optim)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        want = 1e-5 if path[0].key == "vision" else 1e-3     # Adam's first step: lr x sign(grad)
        np.testing.assert_allclose(np.abs(np.asarray(u)), want, rtol=1e-3, err_msg=jax.tree_util.keystr(path))
