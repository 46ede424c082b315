"""dmx-jax Qwen2.5-VL = transformers Qwen2_5_VLForConditionalGeneration on tiny random weights (fp32).

Each reference is saved with transformers' save_pretrained and loaded through dmx_jax.hf.load_pretrained,
so these tests cover the loader and the name table as well as the model. Config "a": untied head, 4 heads /
2 KV heads, mrope (2,3,3), merge 2, full attention in vision block 1. Config "b": tied head, 2 heads / 1 KV
head, mrope (4,4,4), merge 3, full attention in vision block 0.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from dmx_jax.hf import load_pretrained
from dmx_jax.model import Qwen25VL, init_cache, rope_index, vision_inputs
from tests.helpers import hf_reference as R

TOL = 1e-4


@pytest.fixture(scope="module", params=["a", "b"])
def pair(request, tmp_path_factory):
    ref = R.make_reference(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    ref.save_pretrained(path)
    model, cfg = load_pretrained(path)
    return request.param, ref, model, cfg


def _images(cfg, sizes, seed):
    m = cfg.vision.spatial_merge_size
    f = R.processor(merge_size=m)(
        images=[R.gray_image(h, w, seed + i) for i, (h, w) in enumerate(sizes)], return_tensors="np"
    )
    return f["pixel_values"], f["image_grid_thw"], R.image_tokens(f["image_grid_thw"], merge=m)


def _reference_positions(ref, ids, mask, grid):
    ids_t = torch.as_tensor(ids)
    pos, delta = ref.model.get_rope_index(
        ids_t,
        (ids_t == R.IMAGE).int(),
        None if grid is None else torch.as_tensor(grid),
        attention_mask=torch.as_tensor(mask),
    )
    return pos.numpy(), delta.numpy()


def _compare(case, ref, model, ids, mask, pv=None, grid=None):
    """Logits through the internal position path and with transformers' own position ids."""
    want = R.reference_logits(ref, ids, mask, pv, grid)
    valid = mask.astype(bool)
    got = np.asarray(model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
    err = float(np.abs(got - want)[valid].max())
    pos, _ = _reference_positions(ref, ids, mask, grid)
    got_explicit = np.asarray(model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask, position_ids=pos))
    err_explicit = float(np.abs(got_explicit - want)[valid].max())
    print(f"PARITY {case}: max|dlogits| internal positions {err:.2e}, reference positions {err_explicit:.2e}")
    assert err <= TOL and err_explicit <= TOL, (err, err_explicit)


def test_text_only_and_left_padded_batch(pair):
    name, ref, model, _ = pair
    ids, mask = R.left_pad([[1, 5, 9, 33, 70, 2], [1, 44, 12], [1, 7, 7, 8, 9, 10, 11, 12]])
    _compare(f"{name} text-only left-padded", ref, model, ids, mask)


def test_one_image(pair):
    name, ref, model, cfg = pair
    pv, grid, n = _images(cfg, [(56, 84)], 1)
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 10, 11], [20, 21, 22]])])
    _compare(f"{name} one image", ref, model, ids, mask, pv, grid)


def test_two_images_several_windows_left_padded(pair):
    """Two non-square images in one row (several attention windows each, full-attention block too),
    plus a second, shorter row with one image: left padding with images."""
    name, ref, model, cfg = pair
    pv, grid, n = _images(cfg, [(168, 224), (112, 56), (84, 140)], 2)
    row0 = R.prompt_ids(n[:2], [[1, 10], [30, 31], [40, 41, 42]])
    row1 = R.prompt_ids(n[2:], [[1], [50, 51]])
    ids, mask = R.left_pad([row0, row1])
    m = cfg.vision.spatial_merge_size
    win = cfg.vision.window_size // m // cfg.vision.patch_size
    assert grid[0, 1] // m > win and grid[0, 2] // m > win and grid[0, 1] != grid[0, 2]  # several windows
    assert tuple(grid[0]) != tuple(grid[1]) and grid[1, 1] != grid[1, 2]
    assert cfg.vision.fullatt_block_indexes and len(cfg.vision.fullatt_block_indexes) < cfg.vision.depth
    _compare(f"{name} two images, several windows, left-padded", ref, model, ids, mask, pv, grid)


def test_vision_features_and_positions_match(pair):
    name, ref, model, cfg = pair
    pv, grid, n = _images(cfg, [(168, 224), (56, 112)], 5)
    with torch.no_grad():
        out = ref.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
    want = torch.cat(list(out.pooler_output)).numpy()
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    got = np.asarray(model.encode_images(jnp.asarray(pv), vin))
    err = float(np.abs(got - want).max())
    print(f"PARITY {name} vision features {got.shape}: max|d| {err:.2e}")
    assert got.shape == want.shape and err <= TOL
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 2], [3], [4, 5]]), [1, 9, 9]])
    pos_ref, delta_ref = _reference_positions(ref, ids, mask, grid)
    pos, delta = rope_index(ids, grid, mask, spatial_merge_size=cfg.vision.spatial_merge_size, image_token_id=R.IMAGE)
    np.testing.assert_array_equal(pos, pos_ref)
    np.testing.assert_array_equal(delta, delta_ref)


def test_jitted_forward_with_padded_patches(pair):
    name, ref, model, cfg = pair
    pv, grid, n = _images(cfg, [(84, 112)], 7)
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 3], [4]])])
    pos, _ = _reference_positions(ref, ids, mask, grid)
    unit = cfg.vision.spatial_merge_size**2
    extra = 2 * unit
    vin = vision_inputs(grid, cfg.vision, pad_to=pv.shape[0] + extra)
    pv_padded = np.concatenate([pv, np.random.default_rng(0).normal(size=(extra, pv.shape[1])).astype(np.float32)])
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, pos, mask, pv, vin):
        return nnx.merge(graphdef, state).forward(ids, pos, mask, pv, vin)[0]

    got = np.asarray(fwd(state, ids, pos, mask, pv_padded, vin))  # padded patches must not change anything
    want = R.reference_logits(ref, ids, mask, pv, grid)
    err = float(np.abs(got - want).max())
    print(f"PARITY {name} jitted, padded patches: max|dlogits| {err:.2e}")
    assert err <= TOL


def test_kv_cache_prefill_then_decode_equals_full_forward(pair):
    """Prefill writes slots [0, T0), then one token per step at slot `index`: every step's logits equal
    the reference's full-sequence logits (left padding and an image in the prefill)."""
    name, ref, model, cfg = pair
    pv, grid, n = _images(cfg, [(84, 112)], 8)
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 3], [4, 5, 6, 7]]), [1, 9, 10, 11, 12, 13]])
    pos, _ = _reference_positions(ref, ids, mask, grid)
    want = R.reference_logits(ref, ids, mask, pv, grid)
    b, t = ids.shape
    t0 = t - 3
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, ids, pos, key_mask, cache, pv=None, vin=None):
        return nnx.merge(graphdef, state).forward(ids, pos, key_mask, pv, vin, cache=cache)

    cache = init_cache(cfg.text, b, t)
    logits, cache = step(state, ids[:, :t0], pos[:, :, :t0], mask, cache, pv, vin)
    got = [np.asarray(logits)]
    for i in range(t0, t):
        logits, cache = step(state, ids[:, i : i + 1], pos[:, :, i : i + 1], mask, cache)
        got.append(np.asarray(logits))
    assert int(cache["index"]) == t
    got = np.concatenate(got, axis=1)
    err = float(np.abs(got - want)[mask.astype(bool)].max())
    print(f"PARITY {name} KV cache prefill {t0} + {t - t0} decode steps: max|dlogits| {err:.2e}")
    assert err <= TOL


def test_video_inputs_are_rejected(pair):
    _, _, model, _ = pair
    with pytest.raises(NotImplementedError, match="video"):
        model(
            np.ones((1, 4), np.int64),
            pixel_values_videos=np.zeros((4, 1176), np.float32),
            video_grid_thw=np.array([[2, 2, 2]]),
        )


def test_remat_policies_and_bf16_compute(pair):
    """remat "dots" leaves logits and gradients unchanged, "full" the logits; bf16 compute stays close to fp32."""
    name, _, model, cfg = pair
    if name != "a":
        pytest.skip("one config is enough")
    pv, grid, n = _images(cfg, [(56, 84)], 9)
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 3], [4, 5]])])
    pos, _ = rope_index(ids, grid, mask, spatial_merge_size=2, image_token_id=R.IMAGE)
    vin = jax.tree.map(jnp.asarray, vision_inputs(grid, cfg.vision))
    state = nnx.state(model, nnx.Param)

    def run(grad=True, **overrides):
        m = nnx.eval_shape(lambda: Qwen25VL(cfg.replace(**overrides), nnx.Rngs(0)))
        graphdef, _ = nnx.split(m)

        def loss(params):
            logits = nnx.merge(graphdef, params).forward(ids, pos, mask, pv, vin)[0]
            return jnp.mean(logits.astype(jnp.float32) ** 2), logits

        if not grad:
            return np.asarray(jax.jit(loss)(state)[1], np.float32), None
        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        return np.asarray(logits, np.float32), grads

    base, base_grads = run()
    logits, grads = run(remat="dots")
    np.testing.assert_allclose(logits, base, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5), grads, base_grads
    )
    np.testing.assert_allclose(run(grad=False, remat="full")[0], base, atol=1e-6)
    low, _ = run(grad=False, dtype="bfloat16")
    rel = float(np.abs(low - base).max() / np.abs(base).max())
    print(f"bf16 compute vs fp32: max relative |dlogits| {rel:.2e}")
    assert rel < 0.05


def test_chunked_attention_keeps_transformers_parity(pair):
    """attention="chunked" (online softmax over key blocks of 8) against transformers: images, left padding."""
    name, ref, model, cfg = pair
    graphdef = nnx.graphdef(
        nnx.eval_shape(lambda: Qwen25VL(cfg.replace(attention="chunked", attention_block=8), nnx.Rngs(0)))
    )
    chunked = nnx.merge(graphdef, nnx.state(model))
    pv, grid, n = _images(cfg, [(168, 224), (112, 56), (84, 140)], 2)
    ids, mask = R.left_pad(
        [R.prompt_ids(n[:2], [[1, 10], [30, 31], [40, 41, 42]]), R.prompt_ids(n[2:], [[1], [50, 51]])]
    )
    _compare(f"{name} chunked attention, two images, left-padded", ref, chunked, ids, mask, pv, grid)
