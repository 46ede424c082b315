"""preprocess_images equals transformers' PIL Qwen2-VL image processor (grid exact, pixels <= 1e-5)."""

import numpy as np
import pytest
from PIL import Image

from dmx_jax.processing import num_image_tokens, preprocess_images, smart_resize


def _ref(min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: PLC0415 heavy

    return Qwen2VLImageProcessorPil(
        patch_size=14, temporal_patch_size=2, merge_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )


SIZES = [(56, 56), (100, 333), (512, 512), (600, 480), (37, 1500), (2000, 28), (29, 29), (1024, 768), (224, 3000)]


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("pixels", [(56 * 56, 262_144), (128 * 128, 128 * 128), (4 * 28 * 28, 28 * 28 * 1280)])
def test_matches_reference(mode, pixels):
    rng = np.random.default_rng(hash((mode, pixels)) % 2**32)
    ref = _ref(*pixels)
    for h, w in SIZES:
        shape = (h, w) if mode == "L" else (h, w, 3)
        img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
        want = ref(images=[img], return_tensors="np")
        got = preprocess_images([img], min_pixels=pixels[0], max_pixels=pixels[1])
        np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
        assert float(np.abs(got["pixel_values"] - want["pixel_values"]).max()) <= 1e-5, (h, w)


def test_several_images_arrays_and_token_counts():
    rng = np.random.default_rng(1)
    gray_f = rng.random((90, 130)).astype(np.float32)
    gray_u16 = rng.integers(0, 65536, (60, 70), dtype=np.uint16)
    out = preprocess_images([gray_f, gray_u16], max_pixels=128 * 128)
    assert out["image_grid_thw"].shape == (2, 3)
    assert out["pixel_values"].shape == (int(out["image_grid_thw"].prod(1).sum()), 1176)
    np.testing.assert_array_equal(num_image_tokens(out["image_grid_thw"]), out["image_grid_thw"].prod(1) // 4)
    ref = _ref(56 * 56, 128 * 128)(
        images=[Image.fromarray(np.round(gray_f * 255).astype(np.uint8), "L")], return_tensors="np"
    )
    n0 = int(out["image_grid_thw"][0].prod())
    assert float(np.abs(out["pixel_values"][:n0] - ref["pixel_values"]).max()) <= 1e-5


def test_errors_and_smart_resize():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError, match="image 1: image contains NaN"):
        preprocess_images([np.zeros((30, 30), np.float32), np.full((30, 30), np.nan, np.float32)])
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref_resize  # noqa: PLC0415 heavy

    rng = np.random.default_rng(2)
    for h, w in rng.integers(10, 4000, size=(300, 2)):
        if max(h, w) / min(h, w) <= 200:
            for lo, hi in ((56 * 56, 262_144), (3136, 1_003_520)):
                want = ref_resize(int(h), int(w), 28, lo, hi)
                assert smart_resize(int(h), int(w), min_pixels=lo, max_pixels=hi) == want
