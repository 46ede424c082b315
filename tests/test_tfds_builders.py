"""TFDS builders (array_record, TensorFlow absent) on tiny synthetic data and on adapter fixtures, and the meta
and PNG codecs of their records.

References: the synthetic generator's own Examples and load_image on the fixture files (written in the real
IU-Xray / MS-CXR formats by tests/helpers/real_formats.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import real_formats as rf
from helpers.tfds_data import SYN, build_synthetic, deep_equal
from PIL import Image

from data_pipelines.adapters import load_dataset
from data_pipelines.image_io import ImageReadError, decode_image_bytes, load_image
from data_pipelines.synthetic import SyntheticConfig, examples
from data_pipelines.tfds import (
    DmxAdapter,
    DmxSynthetic,
    adapter_config,
    build,
    decode_meta,
    encode_meta,
    encode_png,
    record_to_example,
    synthetic_config,
)


def assert_same_example(got, want, image_atol: float):
    """Every field equal; images within image_atol of the original pixels; boxes as float32."""
    for f in dataclasses.fields(want):
        g, w = getattr(got, f.name), getattr(want, f.name)
        if f.name == "images":
            assert len(g) == len(w)
            for gi, wi in zip(g, w):
                wi = load_image(wi) if isinstance(wi, str) else wi
                assert gi.dtype == np.float32 and gi.shape == wi.shape
                np.testing.assert_allclose(gi, wi, rtol=0, atol=image_atol)
        elif f.name == "boxes":
            assert [b.label for b in g] == [b.label for b in w]
            assert [b.as_tuple() for b in g] == [tuple(float(np.float32(v)) for v in b.as_tuple()) for b in w]
        elif f.name == "labels":
            assert (g is None) == (w is None)
            if w is not None:
                np.testing.assert_array_equal(g, w)  # NaN positions equal too
        else:
            assert deep_equal(g, w), (f.name, g, w)


# --------------------------------------------------------------------------------------------- builders


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return build_synthetic(tmp_path_factory.mktemp("tfds"))


def test_tensorflow_is_absent():
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401, PLC0415 tested


def test_synthetic_build_and_data_source_round_trip(synthetic_dir):
    data_dir, config = synthetic_dir
    assert "tensorflow" not in sys.modules
    files = sorted(p.name for p in (data_dir / "dmx_synthetic" / config.name / "1.0.0").iterdir())
    assert any(".array_record-" in f for f in files) and not any("tfrecord" in f for f in files)
    syn = SyntheticConfig(**SYN)
    for split in ("train", "val", "test", "heldout"):
        source = tfds.data_source(f"dmx_synthetic/{config.name}", data_dir=str(data_dir), split=split)
        assert len(source) == syn.split_size(split)
        for i in range(len(source)):  # records keep generation order
            assert_same_example(record_to_example(source[i]), examples(split, i, syn), image_atol=0.5 / 65535 + 1e-7)
    assert "tensorflow" not in sys.modules


def test_synthetic_8bit_and_tasks(tmp_path):
    config = synthetic_config(**{**SYN, "train_size": 2}, task="difference", bit_depth=8, splits=("train",))
    build(DmxSynthetic, config, tmp_path)
    source = tfds.data_source(f"dmx_synthetic/{config.name}", data_dir=str(tmp_path), split="train")
    syn = SyntheticConfig(**{**SYN, "train_size": 2})
    for i in range(2):
        want = examples("train", i, syn, task="difference")
        got = record_to_example(source[i])
        assert len(got.images) == 2 and got.task == "difference"
        assert_same_example(got, want, image_atol=0.5 / 255 + 1e-7)
    with pytest.raises(ValueError, match="bit_depth"):
        synthetic_config(**SYN, bit_depth=12)


def write_iu_fixture(root):
    """Two IU-Xray reports: one with an 8-bit and a 16-bit PNG, one with a single 8-bit PNG."""
    folder = root / "ecgen-radiology"
    rf.write_iu_report(
        folder,
        1,
        {
            "INDICATION": "Cough",
            "FINDINGS": "Heart size is normal. Lungs are clear.",
            "IMPRESSION": "No acute disease.",
        },
        ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    )
    rf.write_iu_report(folder, 2, {"FINDINGS": "", "IMPRESSION": "Stable cardiomegaly."}, ["CXR2_IM-0652-1001"])
    rf.write_png(root / "NLMCXR_png" / "CXR1_1_IM-0001-3001.png", rf.tiny_gray(40, 32, seed=1))
    wide = np.random.default_rng(2).integers(0, 65536, (36, 30), dtype=np.uint16)
    rf.write_png(root / "NLMCXR_png" / "CXR1_1_IM-0001-4001.png", wide)
    rf.write_png(root / "NLMCXR_png" / "CXR2_IM-0652-1001.png", rf.tiny_gray(33, 29, seed=3))


def write_ms_cxr_fixture(root):
    """Three MS-CXR rows on two MIMIC JPGs (boxes, grounding/referring, train/test)."""
    d1, d2 = "c1aec6b5-1a4b8e2a-bbb8f7d1-5b1c4d9e-8f2a6b3c", "0f3c5e2a-1b2c3d4e-5f6a7b8c-9d0e1f2a-3b4c5d6e"
    p1, p2 = f"files/p15/p15451130/s56960634/{d1}.jpg", f"files/p11/p11111111/s52222222/{d2}.jpg"
    rf.write_csv(
        root / "ms" / "MS_CXR_Local_Alignment_v1.1.0.csv",
        rf.MS_CXR_HEADER,
        [
            (d1, 15451130, 56960634, "Pneumonia", "bilateral opacities", p1, 4, 5, 10, 12, 40, 30, "train"),
            (d1, 15451130, 56960634, "Pneumonia", "bilateral opacities", p1, 20, 6, 8.5, 11.25, 40, 30, "train"),
            (d2, 11111111, 52222222, "Cardiomegaly", "enlarged heart", p2, 1.5, 2, 6, 7.75, 12, 12, "test"),
        ],
    )
    rf.write_jpeg(root / "mimic" / p1, rf.tiny_gray(40, 30, seed=4))
    rf.write_jpeg(root / "mimic" / p2, rf.tiny_gray(12, 12, seed=5))


@pytest.mark.parametrize("adapter", ["iu_xray", "ms_cxr"])
def test_adapter_round_trip(tmp_path, adapter):
    if adapter == "iu_xray":
        write_iu_fixture(tmp_path / "iu")
        root, kwargs = tmp_path / "iu", {}
    else:
        write_ms_cxr_fixture(tmp_path)
        root, kwargs = tmp_path / "ms", {"mimic_root": tmp_path / "mimic", "tasks": ("grounding", "referring")}
    want = list(load_dataset(adapter, root, **kwargs))
    config = adapter_config(adapter, root, **kwargs)
    build(DmxAdapter, config, tmp_path / "tfds")
    got = {}
    for split in sorted({e.split for e in want}):
        source = tfds.data_source(f"dmx_adapter/{config.name}", data_dir=str(tmp_path / "tfds"), split=split)
        got.update({(ex := record_to_example(source[i])).example_id: ex for i in range(len(source))})
    assert sorted(got) == sorted(e.example_id for e in want)
    for w in want:  # 8- and 16-bit sources are stored losslessly
        assert_same_example(got[w.example_id], w, image_atol=0.0)
    assert "tensorflow" not in sys.modules


def test_unreadable_image_names_the_example(tmp_path):
    write_iu_fixture(tmp_path / "iu")
    (tmp_path / "iu" / "NLMCXR_png" / "CXR2_IM-0652-1001.png").unlink()
    config = adapter_config("iu_xray", tmp_path / "iu", missing_images="allow")
    with pytest.raises(ImageReadError, match="example iu-xray/CXR2/impression image 0.*file not found"):
        build(DmxAdapter, config, tmp_path / "tfds")


def test_meta_codec_keeps_container_types():
    rng = np.random.default_rng(0)
    meta = {
        "t": (1, (2.5, "a"), [3, (None, True)]),
        "nan": float("nan"),
        "arr": rng.random((2, 3)),
        "ints": np.arange(4, dtype=np.int16),
        "keys": {(1, 2): "pair", 3: [()]},
        "empty": {},
        "s": "x",
    }
    assert deep_equal(decode_meta(encode_meta(meta)), meta)
    with pytest.raises(TypeError, match="meta.bad"):
        encode_meta({"bad": object()})


def test_encode_png_bit_depth_choice():
    on_grid = (np.arange(60, dtype=np.float64).reshape(6, 10) / 255.0).astype(np.float32)
    off_grid = np.random.default_rng(1).random((6, 10)).astype(np.float32)
    assert Image.open(io.BytesIO(encode_png(on_grid))).mode == "L"
    assert Image.open(io.BytesIO(encode_png(off_grid))).mode.startswith("I")
    np.testing.assert_array_equal(decode_image_bytes(encode_png(on_grid)), on_grid)
    assert np.abs(decode_image_bytes(encode_png(off_grid)) - off_grid).max() <= 0.5 / 65535 + 1e-7
