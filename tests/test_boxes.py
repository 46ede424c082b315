"""Box converters: fuzzed round trips (numpy RNG), plain-Python references, transformers' smart_resize."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_pipelines import boxes as B

RNG_SEED = 20250711


def _random_boxes(rng, n, size):
    """n pixel xyxy boxes inside an image of size (w, h), including degenerate and border boxes."""
    w, h = size
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    out = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    out[0] = [0, 0, w, h]  # full image
    out[1] = [w / 2, h / 2, w / 2, h / 2]  # empty box
    return out


def _sizes(rng, n):
    return [(int(rng.integers(16, 4000)), int(rng.integers(16, 4000))) for _ in range(n)]


def test_xywh_round_trip_and_reference():
    rng = np.random.default_rng(RNG_SEED)
    for size in _sizes(rng, 20):
        xyxy = _random_boxes(rng, 50, size)
        xywh = B.xyxy_to_xywh(xyxy)
        for (x1, y1, x2, y2), (x, y, w, h) in zip(xyxy, xywh):
            assert (x, y, w, h) == (x1, y1, x2 - x1, y2 - y1)
        np.testing.assert_allclose(B.xywh_to_xyxy(xywh), xyxy, rtol=0, atol=1e-9)
    # A ChestX-ray14 BBox_List row (x, y, w, h in 1024^2 px) converted by hand.
    row = [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661]
    assert B.xywh_to_xyxy(row).tolist() == [row[0], row[1], row[0] + row[2], row[1] + row[3]]


def test_normalized_round_trip_and_range():
    rng = np.random.default_rng(RNG_SEED + 1)
    for size in _sizes(rng, 20):
        xyxy = _random_boxes(rng, 40, size)
        norm = B.xyxy_to_normalized(xyxy, size)
        assert norm.min() >= 0 and norm.max() <= 1
        np.testing.assert_allclose(norm[:, [0, 2]] * size[0], xyxy[:, [0, 2]], rtol=1e-12)
        np.testing.assert_allclose(B.normalized_to_xyxy(norm, size), xyxy, rtol=1e-12, atol=1e-9)


def test_vindr_is_canonical_and_rejects_inverted_boxes():
    box = [691.0, 1375.0, 1653.0, 1831.0]  # a real vinbigdata-train.csv Cardiomegaly row
    assert B.vindr_to_xyxy(box).tolist() == box and B.xyxy_to_vindr(box).tolist() == box
    with pytest.raises(ValueError, match="x_max < x_min"):
        B.vindr_to_xyxy([10, 10, 5, 20])


def _chexinstruct_reference(box, size):
    """CheXagent data_chexinstruct: int(c / side * 1000), then min(q, 999) and Python round(q / 10)."""
    w, h = size
    q = [int(box[0] / w * 1000), int(box[1] / h * 1000), int(box[2] / w * 1000), int(box[3] / h * 1000)]
    return [round(min(v, 999) / 10) for v in q]


def test_chexinstruct_bins_match_reference_and_decode_within_a_bin():
    rng = np.random.default_rng(RNG_SEED + 2)
    for size in _sizes(rng, 20) + [(1000, 1000), (512, 640)]:
        xyxy = _random_boxes(rng, 60, size)
        # exact per-mille values hit the round-half-to-even path (e.g. 25 -> 2, 35 -> 4)
        xyxy[2] = [0.025 * size[0], 0.035 * size[1], 0.995 * size[0], 0.999 * size[1]]
        # a box running past the image edge (rounded annotations) hits the 999 cap
        xyxy[3] = [0.5 * size[0], 0.5 * size[1], 1.2 * size[0], 1.01 * size[1]]
        bins = B.xyxy_to_chexinstruct(xyxy, size)
        expected = np.array([_chexinstruct_reference(b, size) for b in xyxy])
        np.testing.assert_array_equal(bins, expected)
        assert bins.min() >= 0 and bins.max() <= 100
        back = B.chexinstruct_to_xyxy(bins, size)
        scale = np.array([size[0], size[1], size[0], size[1]], float)
        inside = np.all(xyxy <= scale, axis=1)
        assert np.all(np.abs(back - xyxy)[inside] <= 0.0105 * scale + 1e-9)
    assert B.format_chexinstruct_box([26, 42, 78, 79]) == "<|box|>(26,42),(78,79)<|/box|>"
    assert (
        B.format_chexinstruct_box([1, 2, 3, 4], ref="pneumothorax")
        == "<|ref|>pneumothorax<|/ref|><|box|>(1,2),(3,4)<|/box|>"
    )


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize  # noqa: PLC0415 heavy

    rng = np.random.default_rng(RNG_SEED + 3)
    cases = [(int(rng.integers(1, 5000)), int(rng.integers(1, 5000))) for _ in range(400)]
    cases += [(1955, 1841), (1024, 1024), (3056, 2544), (10, 1000), (28, 28), (27, 29), (14, 14)]
    settings = [
        dict(min_pixels=56 * 56, max_pixels=262_144),
        dict(min_pixels=256 * 28 * 28, max_pixels=1_003_520),
        dict(min_pixels=3136, max_pixels=12_845_056),
    ]
    for h, w in cases:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError):
                B.smart_resize(h, w)
            continue
        for kw in settings:
            ours = B.smart_resize(h, w, **kw)
            assert ours == tuple(hf_smart_resize(h, w, factor=28, **kw)), (h, w, kw)
            assert ours[0] % 28 == 0 and ours[1] % 28 == 0
    assert B.qwen_input_size((1841, 1955)) == tuple(reversed(hf_smart_resize(1955, 1841, 28, 3136, 262_144)))


def test_smart_resize_agrees_with_dmx_jax_processing_if_present():
    processing = pytest.importorskip("dmx_jax.processing")
    if not hasattr(processing, "smart_resize"):
        pytest.skip("dmx_jax.processing.smart_resize not written yet")
    for h, w in [(1955, 1841), (1024, 1024), (300, 4000), (50, 60)]:
        assert tuple(processing.smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=262_144)) == B.smart_resize(
            h, w, min_pixels=3136, max_pixels=262_144
        )


def test_qwen_coordinates_reference_and_round_trip():
    rng = np.random.default_rng(RNG_SEED + 4)
    for size in _sizes(rng, 25):
        xyxy = _random_boxes(rng, 40, size)
        resized = B.qwen_input_size(size)
        assert resized[0] * resized[1] <= B.QWEN_MAX_PIXELS
        qwen = B.xyxy_to_qwen(xyxy, size)
        assert qwen.dtype == np.int64
        sx, sy = resized[0] / size[0], resized[1] / size[1]
        for box, q in zip(xyxy, qwen):  # plain-Python reference: scale, round half to even, clamp to the input
            ref = [
                min(max(round(box[0] * sx), 0), resized[0]),
                min(max(round(box[1] * sy), 0), resized[1]),
                min(max(round(box[2] * sx), 0), resized[0]),
                min(max(round(box[3] * sy), 0), resized[1]),
            ]
            assert q.tolist() == ref
        back = B.qwen_to_xyxy(qwen, size)
        tol = np.array([0.5 / sx, 0.5 / sy, 0.5 / sx, 0.5 / sy]) + 1e-6
        assert np.all(np.abs(back - xyxy) <= tol)
        np.testing.assert_allclose(B.xyxy_to_qwen(back, size), qwen)  # integer grid is a fixed point


def test_qwen_with_explicit_resized_size_and_pixel_budget():
    size = (2000, 1000)
    box = [500.0, 250.0, 1500.0, 750.0]
    assert B.xyxy_to_qwen(box, size, resized=(700, 350)).tolist() == [175, 88, 525, 262]  # 87.5 and 262.5: half-even
    big = B.qwen_input_size(size, max_pixels=28 * 28 * 1280)
    small = B.qwen_input_size(size)
    assert big[0] * big[1] > small[0] * small[1]
    assert (
        B.qwen_to_xyxy(B.xyxy_to_qwen(box, size, max_pixels=28 * 28 * 1280), size, max_pixels=28 * 28 * 1280).tolist()
        == box
    )  # exact when the scale is a clean ratio


def test_box_text_round_trip():
    rng = np.random.default_rng(RNG_SEED + 5)
    ints = rng.integers(-50, 5000, (100, 4))
    for box in ints:
        text = B.format_box_text(box)
        assert text == f"[{box[0]}, {box[1]}, {box[2]}, {box[3]}]"
        assert B.parse_box_texts(text) == [tuple(float(v) for v in box)]
    many = B.format_boxes_text(ints[:3])
    assert B.parse_box_texts(f"step 1 {many} so the answer") == [tuple(map(float, b)) for b in ints[:3]]
    assert B.format_box_text([1.5, 2.5, 3.49, 3.51]) == "[2, 2, 3, 4]"  # half to even
    assert B.parse_box_texts("[1.5,2, 3 ,4.25]") == [(1.5, 2.0, 3.0, 4.25)]
    with pytest.raises(ValueError):
        B.format_box_text([1, 2, 3])


def test_bad_shapes_and_sizes_raise():
    with pytest.raises(ValueError, match="trailing axis of 4"):
        B.xywh_to_xyxy([1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        B.xyxy_to_normalized([0, 0, 1, 1], (0, 10))
    with pytest.raises(ValueError, match="aspect ratio"):
        B.smart_resize(10, 3000)
    assert B.clip_xyxy([-5, 3, 700, 90], (640, 80)).tolist() == [0, 3, 640, 80]
    assert math.isclose(B.xyxy_to_normalized([[0, 0, 640, 80]], (640, 80))[0, 3], 1.0)
