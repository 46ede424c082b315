"""Sharded forward (with images) equals the unsharded one on four mesh shapes; weights really are split
as the rule table says; load_pretrained(mesh=...) places tensors directly in their shardings."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from dmx_jax.hf import load_pretrained
from dmx_jax.model import rope_index, vision_inputs
from dmx_jax.sharding import MeshConfig, batch_spec, make_mesh, tree_shardings
from tests.helpers import hf_reference as R


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref = R.make_reference("a", seed=5)
    path = tmp_path_factory.mktemp("hf_shard")
    ref.save_pretrained(path)
    model, cfg = load_pretrained(path)
    f = R.processor()(images=[R.gray_image(84, 112, 1), R.gray_image(56, 84, 2)], return_tensors="np")
    n = R.image_tokens(f["image_grid_thw"])
    rows = [R.prompt_ids(n, [[1, 7], [8, 9], [10]])] * 4 + [[1, 2, 3, 4]] * 4
    ids, mask = R.left_pad(rows)
    grid = np.concatenate([f["image_grid_thw"]] * 4)
    pv = np.concatenate([f["pixel_values"]] * 4)
    pos, _ = rope_index(ids, grid, mask, image_token_id=R.IMAGE)
    vin = vision_inputs(grid, cfg.vision)
    return path, model, cfg, (ids, pos, mask, pv, vin)


def _forward(graphdef, params, inputs):
    ids, pos, mask, pv, vin = inputs
    return nnx.merge(graphdef, params).forward(ids, pos, mask, pv, vin)[0]


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)])
def test_sharded_forward_equals_unsharded(setup, shape):
    path, model, cfg, inputs = setup
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    want = np.asarray(jax.jit(_forward, static_argnums=0)(graphdef, params, inputs))
    mesh = make_mesh(MeshConfig(*shape))
    sh = tree_shardings(params, mesh)
    sharded = jax.device_put(params, sh)
    ids, pos, mask, pv, vin = inputs
    bspec = NamedSharding(mesh, batch_spec(2))
    placed = (
        jax.device_put(ids, bspec),
        jax.device_put(pos, NamedSharding(mesh, batch_spec(3, batch_axis=1))),
        jax.device_put(mask, bspec),
        pv,
        vin,
    )
    got = np.asarray(jax.jit(_forward, static_argnums=0)(graphdef, sharded, placed))
    valid = mask.astype(bool)
    assert float(np.abs(got - want)[valid].max()) <= 1e-5
    q = sharded["text"]["layers"]["attn"]["q"]["kernel"]  # [L, D, N, H] = [2, 64, 4, 16]
    up = sharded["text"]["layers"]["mlp"]["up"]["kernel"]  # [L, D, F]   = [2, 64, 128]
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    split = lambda n, k: n // k if n % k == 0 else n
    assert q.addressable_shards[0].data.shape == (2, split(64, fsdp), split(4, tensor), 16)
    assert up.addressable_shards[0].data.shape == (2, split(64, fsdp), split(128, tensor))
    qkv = sharded["vision"]["blocks"]["attn"]["qkv"]["kernel"]  # [Lv, Dv, 3, Nv, Hv] = [2, 32, 3, 2, 16]
    assert qkv.addressable_shards[0].data.shape == (2, split(32, fsdp), 3, split(2, tensor), 16)
    if shape != (8, 1, 1):
        assert np.prod(up.addressable_shards[0].data.shape) < np.prod(up.shape)  # really split


def test_load_pretrained_onto_a_mesh(setup):
    path, model, _, _ = setup
    mesh = make_mesh(MeshConfig(1, 4, 2))
    sharded_model, _ = load_pretrained(path, mesh=mesh)
    emb = nnx.state(sharded_model)["text"]["embed"]["embedding"][...]
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert emb.addressable_shards[0].data.shape == (1000 // 2, 64 // 4)
    ref = nnx.state(model)["text"]["embed"]["embedding"][...]
    np.testing.assert_array_equal(np.asarray(emb), np.asarray(ref))


def test_activation_constraints_under_context_mesh_equal_unsharded(setup):
    """Under jax.set_mesh the residual stream, q/k/v, MLP hidden, vision blocks and merger carry sharding
    constraints from the rule table; results equal the unsharded forward on a (2,2,2) mesh, for the packed
    image layout and for per-row images (vmapped tower with spmd_axis_name)."""
    _, model, cfg, inputs = setup
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    want = np.asarray(jax.jit(_forward, static_argnums=0)(graphdef, params, inputs))
    mesh = make_mesh(MeshConfig(2, 2, 2))
    sharded = jax.device_put(params, tree_shardings(params, mesh))
    with jax.set_mesh(mesh):
        jaxpr = str(jax.make_jaxpr(_forward, static_argnums=0)(graphdef, sharded, inputs))
        got = np.asarray(jax.jit(_forward, static_argnums=0)(graphdef, sharded, inputs))
    assert jaxpr.count("sharding_constraint") >= 8, "activation constraints missing"
    valid = inputs[2].astype(bool)
    assert float(np.abs(got - want)[valid].max()) <= 1e-5

    # per-row images (the data pipeline's layout): every row one 84x112 image
    f = R.processor()(images=[R.gray_image(84, 112, 3 + i) for i in range(8)], return_tensors="np")
    grid = f["image_grid_thw"]
    n = R.image_tokens(grid[:1])
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 7 + i % 3], [8]]) for i in range(8)])
    pos, _ = rope_index(ids, grid, mask, image_token_id=R.IMAGE)
    pv = f["pixel_values"].reshape(8, -1, f["pixel_values"].shape[-1])
    vin = jax.tree.map(lambda *a: np.stack(a), *[vision_inputs(grid[i : i + 1], cfg.vision) for i in range(8)])

    def rowwise(graphdef, params, ids, pos, mask, pv, vin):
        return nnx.merge(graphdef, params).forward(ids, pos, mask, pv, vin)[0]

    want = np.asarray(jax.jit(rowwise, static_argnums=0)(graphdef, params, ids, pos, mask, pv, vin))
    with jax.set_mesh(mesh):
        got = np.asarray(jax.jit(rowwise, static_argnums=0)(graphdef, sharded, ids, pos, mask, pv, vin))
    assert float(np.abs(got - want)[mask.astype(bool)].max()) <= 1e-5
