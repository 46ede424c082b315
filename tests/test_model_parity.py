"""dmx-jax Qwen2.5-VL = transformers Qwen2_5_VLForConditionalGeneration on tiny random weights (fp32).

Each reference is saved with transformers' save_pretrained and loaded through dmx_jax.hf.load_pretrained,
so these tests cover the loader and the name table as well as the model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dmx_jax.hf import load_pretrained
from dmx_jax.model import rope_index, vision_inputs
from tests.helpers import hf_reference as R

TOL = 1e-4


@pytest.fixture(scope="module", params=["a", "b"])
def pair(request, tmp_path_factory):
    ref = R.make_reference(request.param)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    ref.save_pretrained(path)
    model, cfg = load_pretrained(path)
    return request.param, ref, model, cfg


def _compare(ref, model, ids, mask, pv=None, grid=None):
    want = R.reference_logits(ref, ids, mask, pv, grid)
    got = np.asarray(model(ids, pixel_values=pv, image_grid_thw=grid, attention_mask=mask))
    valid = mask.astype(bool)
    err = float(np.abs(got - want)[valid].max())
    assert err <= TOL, err
    return err


def test_text_only_and_left_padded_batch(pair):
    _, ref, model, _ = pair
    ids, mask = R.left_pad([[1, 5, 9, 33, 70, 2], [1, 44, 12], [1, 7, 7, 8, 9, 10, 11, 12]])
    _compare(ref, model, ids, mask)


def test_one_image(pair):
    _, ref, model, _ = pair
    f = R.processor()(images=[R.gray_image(56, 84, 1)], return_tensors="np")
    ids, mask = R.left_pad([R.prompt_ids(R.image_tokens(f["image_grid_thw"]), [[1, 10, 11], [20, 21, 22]])])
    _compare(ref, model, ids, mask, f["pixel_values"], f["image_grid_thw"])


def test_two_images_several_windows_left_padded(pair):
    """Two non-square images in one row (several attention windows each, full-attention block too),
    plus a second, shorter row with one image: left padding with images."""
    _, ref, model, cfg = pair
    f = R.processor()(images=[R.gray_image(168, 224, 2), R.gray_image(112, 56, 3), R.gray_image(84, 140, 4)],
                      return_tensors="np")
    n = R.image_tokens(f["image_grid_thw"])
    row0 = R.prompt_ids(n[:2], [[1, 10], [30, 31], [40, 41, 42]])
    row1 = R.prompt_ids(n[2:], [[1], [50, 51]])
    ids, mask = R.left_pad([row0, row1])
    win = cfg.vision.window_size // cfg.vision.spatial_merge_size // cfg.vision.patch_size
    assert (f["image_grid_thw"][0, 1] // 2) > win and (f["image_grid_thw"][0, 2] // 2) > win  # several windows
    _compare(ref, model, ids, mask, f["pixel_values"], f["image_grid_thw"])


def test_vision_features_and_positions_match(pair):
    _, ref, model, cfg = pair
    f = R.processor()(images=[R.gray_image(168, 224, 5), R.gray_image(56, 112, 6)], return_tensors="np")
    with torch.no_grad():
        out = ref.model.get_image_features(torch.as_tensor(f["pixel_values"]), torch.as_tensor(f["image_grid_thw"]))
    want = torch.cat(list(out.pooler_output)).numpy() if hasattr(out, "pooler_output") else torch.cat(list(out)).numpy()
    vin = jax.tree.map(jnp.asarray, vision_inputs(f["image_grid_thw"], cfg.vision))
    got = np.asarray(model.encode_images(jnp.asarray(f["pixel_values"]), vin))
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= TOL
    n = R.image_tokens(f["image_grid_thw"])
    ids, mask = R.left_pad([R.prompt_ids(n, [[1, 2], [3], [4, 5]]), [1, 9, 9]])
    ids_t = torch.as_tensor(ids)
    thw = np.concatenate([f["image_grid_thw"]])
    pos_ref, delta_ref = ref.model.get_rope_index(ids_t, (ids_t == R.IMAGE).int(), torch.as_tensor(thw),
                                                  attention_mask=torch.as_tensor(mask))
    pos, delta = rope_index(ids, thw, mask, spatial_merge_size=2, image_token_id=R.IMAGE)
    np.testing.assert_array_equal(pos, pos_ref.numpy())
    np.testing.assert_array_equal(delta, delta_ref.numpy())


def test_jitted_forward_equals_eager(pair):
    _, ref, model, cfg = pair
    from flax import nnx
    f = R.processor()(images=[R.gray_image(84, 112, 7)], return_tensors="np")
    ids, mask = R.left_pad([R.prompt_ids(R.image_tokens(f["image_grid_thw"]), [[1, 3], [4]])])
    pos, _ = rope_index(ids, f["image_grid_thw"], mask, image_token_id=R.IMAGE)
    vin = vision_inputs(f["image_grid_thw"], cfg.vision, pad_to=f["pixel_values"].shape[0] + 8)
    pv = np.concatenate([f["pixel_values"], np.zeros((8, f["pixel_values"].shape[1]), np.float32)])
    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, pos, mask, pv, vin):
        return nnx.merge(graphdef, state).forward(ids, pos, mask, pv, vin)[0]

    got = np.asarray(fwd(state, ids, pos, mask, pv, vin))  # padded patches must not change anything
    want = R.reference_logits(ref, ids, mask, f["pixel_values"], f["image_grid_thw"])
    assert float(np.abs(got - want).max()) <= TOL
