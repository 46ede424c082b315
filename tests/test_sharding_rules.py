"""The sharding table: every parameter path is covered, specs follow the rules, indivisible dims replicate."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dmx_jax.sharding import (
    SAMPLE_RULES,
    TRAIN_RULES,
    MeshConfig,
    logical_axes,
    make_mesh,
    param_spec,
    shardings_like_params,
    tree_partition_specs,
)


def _fake_params(L=2, D=16, N=4, K=2, H=4, F=32, V=64, Dv=8, Nv=2, Hv=4, Fv=16, m=2, C=24):
    z = lambda *s: np.zeros(s, np.float32)
    return {
        "vision": {
            "patch_embed": {"kernel": z(C, Dv)},
            "blocks": {
                "norm1": {"scale": z(L, Dv)},
                "norm2": {"scale": z(L, Dv)},
                "attn": {
                    "qkv": {"kernel": z(L, Dv, 3, Nv, Hv), "bias": z(L, 3, Nv, Hv)},
                    "proj": {"kernel": z(L, Nv, Hv, Dv), "bias": z(L, Dv)},
                },
                "mlp": {
                    "gate": {"kernel": z(L, Dv, Fv), "bias": z(L, Fv)},
                    "up": {"kernel": z(L, Dv, Fv), "bias": z(L, Fv)},
                    "down": {"kernel": z(L, Fv, Dv), "bias": z(L, Dv)},
                },
            },
            "merger": {
                "ln_q": {"scale": z(Dv)},
                "fc1": {"kernel": z(Dv * m * m, Dv * m * m), "bias": z(Dv * m * m)},
                "fc2": {"kernel": z(Dv * m * m, D), "bias": z(D)},
            },
        },
        "text": {
            "embed": {"embedding": z(V, D)},
            "layers": {
                "input_norm": {"scale": z(L, D)},
                "post_attn_norm": {"scale": z(L, D)},
                "attn": {
                    "q": {"kernel": z(L, D, N, H), "bias": z(L, N, H)},
                    "k": {"kernel": z(L, D, K, H), "bias": z(L, K, H)},
                    "v": {"kernel": z(L, D, K, H), "bias": z(L, K, H)},
                    "o": {"kernel": z(L, N, H, D)},
                },
                "mlp": {"gate": {"kernel": z(L, D, F)}, "up": {"kernel": z(L, D, F)}, "down": {"kernel": z(L, F, D)}},
            },
            "norm": {"scale": z(D)},
        },
        "lm_head": {"kernel": z(D, V)},
    }


def test_every_parameter_has_a_rule():
    params = _fake_params()
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        assert len(logical_axes(path, x.ndim)) == x.ndim


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(KeyError, match="text.layers.attn.rogue.kernel"):
        logical_axes("text.layers.attn.rogue.kernel", 3)


def test_train_and_sample_specs_on_2x2x2():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    assert param_spec("text.layers.attn.q.kernel", (2, 16, 4, 4), mesh) == P(None, "fsdp", "tensor", None)
    assert param_spec("text.layers.mlp.down.kernel", (2, 32, 16), mesh) == P(None, "tensor", "fsdp")
    assert param_spec("text.embed.embedding", (64, 16), mesh) == P("tensor", "fsdp")
    # sampling layout keeps tensor parallelism but no fsdp on weights
    assert param_spec("text.layers.attn.q.kernel", (2, 16, 4, 4), mesh, SAMPLE_RULES) == P(None, None, "tensor", None)
    # indivisible dimension (3 kv heads on tensor=2) falls back to replicated
    assert param_spec("text.layers.attn.k.kernel", (2, 16, 3, 4), mesh) == P(None, "fsdp", None, None)


def test_size_one_axes_are_dropped_and_specs_apply_to_whole_tree():
    mesh = make_mesh(MeshConfig(8, 1, 1))
    specs = tree_partition_specs(_fake_params(), mesh)
    assert all(s == P(*([None] * len(s))) for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))
    mesh = make_mesh(MeshConfig(1, 1, 8))
    specs = tree_partition_specs(_fake_params(), mesh, TRAIN_RULES)
    assert specs["text"]["layers"]["mlp"]["gate"]["kernel"] == P(None, None, "tensor")


def test_optimizer_moments_follow_parameters():
    mesh = make_mesh(MeshConfig(1, 8, 1))
    params = _fake_params()
    opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
    sh = shardings_like_params(opt_state, params, mesh)
    mu = sh[0].mu["text"]["layers"]["mlp"]["up"]["kernel"]
    assert mu.spec == P(None, "fsdp", None)
    assert sh[0].count.spec == P()


def test_mesh_config_resolution_and_errors():
    assert MeshConfig(2, -1, 2).resolve(8) == (2, 2, 2)
    with pytest.raises(ValueError, match="at most one"):
        MeshConfig(-1, -1, 1).resolve(8)
    with pytest.raises(ValueError, match="cannot be split"):
        MeshConfig(3, -1, 1).resolve(8)
