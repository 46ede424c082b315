"""TFDS builders (array_record, TensorFlow absent) and the grain pipeline on tiny synthetic data.

References: the synthetic generator's own Examples, load_image on the fixture files (written in the real
IU-Xray / MS-CXR formats by tests/helpers/real_formats.py) and experiments.data.encode (the driver's encoder).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import real_formats as rf

from data_pipelines.adapters import load_dataset
from data_pipelines.image_io import load_image
from data_pipelines.pipeline import (
    DoesNotFit,
    EncodingConfig,
    RowEncoder,
    check_buckets,
    encode_example,
    make_dataset,
    measure,
)
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
from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model.config import tiny

SYN = dict(seed=5, image_size=64, train_size=12, val_size=3, test_size=2, heldout_size=2)


def deep_equal(a, b) -> bool:
    """Structural equality with container types kept (tuple != list) and NaN == NaN."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


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
    data_dir = tmp_path_factory.mktemp("tfds")
    config = synthetic_config(**SYN)
    build(DmxSynthetic, config, data_dir)
    return data_dir, config


def test_tensorflow_is_absent():
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401


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
    from data_pipelines.image_io import ImageReadError

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
    import io

    from PIL import Image

    from data_pipelines.image_io import decode_image_bytes

    on_grid = (np.arange(60, dtype=np.float64).reshape(6, 10) / 255.0).astype(np.float32)
    off_grid = np.random.default_rng(1).random((6, 10)).astype(np.float32)
    assert Image.open(io.BytesIO(encode_png(on_grid))).mode == "L"
    assert Image.open(io.BytesIO(encode_png(off_grid))).mode.startswith("I")
    np.testing.assert_array_equal(decode_image_bytes(encode_png(on_grid)), on_grid)
    assert np.abs(decode_image_bytes(encode_png(off_grid)) - off_grid).max() <= 0.5 / 65535 + 1e-7


# --------------------------------------------------------------------------------------------- pipeline

MODEL = tiny()
MIN_PIXELS, MAX_PIXELS = 56 * 56, 64 * 64  # 64x64 images -> 16 patches each
BUCKETS = [(200, 32), (160, 16), (480, 32)]  # unsorted on purpose; tried as (160,16) < (200,32) < (480,32)


@pytest.fixture(scope="module")
def pool():
    """12 mixed-task examples (16 patches each) + 2 difference examples (2 images, 32 patches)."""
    syn = SyntheticConfig(**SYN)
    return [examples("train", i, syn) for i in range(12)] + [
        examples("val", i, syn, task="difference") for i in range(2)
    ]


@pytest.fixture(scope="module")
def tok(pool, tmp_path_factory):
    corpus = [s for e in pool for s in (e.prompt, e.target, e.meta["reasoning"])]
    return train_sentencepiece(corpus, 300, cache_dir=tmp_path_factory.mktemp("spm"))


def encoding(**kw) -> EncodingConfig:
    return EncodingConfig(vision=MODEL.vision, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, **kw)


def reference_row(example, tok, bucket, enc: EncodingConfig) -> dict:
    """The row the one encoder gives this example on its own, padded to `bucket` (no grain, no batching)."""
    return encode_example(example, tok, enc, seq_len=bucket[0], patch_budget=bucket[1])


def assert_row_matches_reference(arrays: dict, meta_row: dict, i: int, want: dict):
    for k, v in want.items():
        if k == "vision_inputs":
            for kk, vv in v.items():
                np.testing.assert_array_equal(arrays[k][kk][i], vv, err_msg=kk)
        elif k == "meta":
            for kk, vv in v.items():
                assert deep_equal(meta_row[kk], vv), kk
        else:
            assert arrays[k][i].dtype == np.asarray(v).dtype, k
            np.testing.assert_array_equal(arrays[k][i], v, err_msg=k)


def check_batches_against_reference(batches, by_id, tok, enc, buckets):
    order = check_buckets(buckets)
    for arrays, meta in batches:
        seq_len, patch_budget = meta["bucket"]
        assert meta["bucket"] in order
        assert (
            arrays["input_ids"].shape
            == arrays["loss_mask"].shape
            == arrays["attention_mask"].shape
            == (len(meta["valid"]), seq_len)
        )
        assert arrays["positions"].shape == (len(meta["valid"]), 3, seq_len)
        assert arrays["pixel_values"].shape[:2] == (len(meta["valid"]), patch_budget)
        for i, (eid, ok) in enumerate(zip(meta["example_ids"], meta["valid"])):
            want = reference_row(by_id[eid], tok, meta["bucket"], enc)
            if not ok:  # a pad row: a real row with no loss
                want = {**want, "loss_mask": np.zeros_like(want["loss_mask"])}
            assert_row_matches_reference(arrays, meta["rows"][i], i, want)
            for earlier in order[: order.index(meta["bucket"])]:  # the first bucket that fits was chosen
                with pytest.raises(DoesNotFit):
                    reference_row(by_id[eid], tok, earlier, enc)


@pytest.mark.parametrize("reasoning,prompt_only", [(False, False), (True, False), (False, True)])
def test_experiment_rows_come_from_the_one_encoder(pool, tok, reasoning, prompt_only):
    """The experiment driver's encode_all (synthetic default, eval and RL prompts) gives encode_example's rows, one
    pixel array per example through the shared image cache, and the driver's skip / raise rules on DoesNotFit."""
    from experiments.configs import tiny as tiny_experiment
    from experiments.datasets import encode_all
    from experiments.overrides import apply_overrides

    enc = encoding(reasoning=reasoning, prompt_only=prompt_only)
    cfg = apply_overrides(
        tiny_experiment(),
        [
            f"data.min_pixels={MIN_PIXELS}",
            f"data.max_pixels={MAX_PIXELS}",
            "data.patch_budget=40",
            "data.on_too_long=error",
        ],
    )
    examples_ = pool[:4] + pool[-1:]
    cache: dict = {}
    rows = encode_all(examples_, tok, MODEL, cfg, 1500, cache, reasoning=reasoning, prompt_only=prompt_only)
    again = encode_all(examples_, tok, MODEL, cfg, 1500, cache, reasoning=not reasoning, prompt_only=prompt_only)
    for ex, got, other in zip(examples_, rows, again):
        want = encode_example(ex, tok, enc, seq_len=1500, patch_budget=40)
        batched = {k: (v[None] if k not in ("meta", "vision_inputs") else v) for k, v in got.items()}
        batched["vision_inputs"] = {k: v[None] for k, v in got["vision_inputs"].items()}
        assert_row_matches_reference(batched, got["meta"], 0, want)
        assert got["meta"]["image"] is other["meta"]["image"]  # decoded once, shared through the cache
        assert measure(ex, tok, enc)[0] == int(got["attention_mask"].sum())
    with pytest.raises(DoesNotFit, match=pool[0].example_id):
        encode_all(pool[:1], tok, MODEL, cfg, 8, reasoning=reasoning, prompt_only=prompt_only)
    skip = apply_overrides(cfg, ["data.on_too_long=skip"])
    assert encode_all(pool[:2], tok, MODEL, skip, 8, reasoning=reasoning, prompt_only=prompt_only) == []


@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_batches_are_bucket_shaped_and_match_reference(pool, tok, remainder):
    enc = encoding()
    ds = make_dataset(pool, tokenizer=tok, encoding=enc, batch_size=3, buckets=BUCKETS, seed=3, remainder=remainder)
    batches = list(iter(ds))
    by_id = {e.example_id: e for e in pool}
    check_batches_against_reference(batches, by_id, tok, enc, BUCKETS)
    assert len({m["bucket"] for _, m in batches}) == 3
    valid = [eid for _, m in batches for eid, ok in zip(m["example_ids"], m["valid"]) if ok]
    assert len(valid) == len(set(valid))
    if remainder == "pad":
        assert sorted(valid) == sorted(by_id)
    else:
        assert all(all(m["valid"]) for _, m in batches) and len(valid) % 3 == 0


def test_tfds_source_feeds_the_pipeline(synthetic_dir, tok):
    data_dir, config = synthetic_dir
    source = tfds.data_source(f"dmx_synthetic/{config.name}", data_dir=str(data_dir), split="train")
    enc = encoding(reasoning=True)
    buckets = [(600, 16), (1500, 16)]
    batches = list(
        iter(make_dataset(source, tokenizer=tok, encoding=enc, batch_size=2, buckets=buckets, seed=0, remainder="pad"))
    )
    by_id = {(ex := record_to_example(source[i])).example_id: ex for i in range(len(source))}
    check_batches_against_reference(batches, by_id, tok, enc, buckets)
    assert sorted(eid for _, m in batches for eid, ok in zip(m["example_ids"], m["valid"]) if ok) == sorted(by_id)


def test_two_process_shards_are_disjoint_and_complete(pool, tok):
    ids = []
    for shard in range(2):
        ds = make_dataset(
            pool,
            tokenizer=tok,
            encoding=encoding(),
            batch_size=2,
            buckets=BUCKETS,
            seed=9,
            shard_index=shard,
            shard_count=2,
            remainder="pad",
        )
        ids.append([eid for _, m in iter(ds) for eid, ok in zip(m["example_ids"], m["valid"]) if ok])
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(e.example_id for e in pool)
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(
            pool, tokenizer=tok, encoding=encoding(), batch_size=2, buckets=BUCKETS, shard_index=2, shard_count=2
        )


def test_seeded_shuffle_and_epochs(pool, tok):
    def run(seed, epochs):
        ds = make_dataset(
            pool,
            tokenizer=tok,
            encoding=encoding(),
            batch_size=2,
            buckets=BUCKETS,
            seed=seed,
            num_epochs=epochs,
            remainder="pad",
        )
        return [eid for _, m in iter(ds) for eid, ok in zip(m["example_ids"], m["valid"]) if ok]

    a, b, c = run(1, 1), run(1, 1), run(2, 1)
    assert a == b and a != c and sorted(a) == sorted(c)
    two = run(1, 2)
    assert sorted(two) == sorted(a + a)
    one_bucket = make_dataset(
        pool, tokenizer=tok, encoding=encoding(), batch_size=1, buckets=[(1500, 32)], seed=1, num_epochs=2
    )
    stream = [m["example_ids"][0] for _, m in iter(one_bucket)]  # batch_size 1, one bucket: the row order
    n = len(pool)
    assert sorted(stream[:n]) == sorted(stream[n:]) == sorted(e.example_id for e in pool)
    assert stream[:n] != stream[n:]  # reshuffled every epoch


def same_batches(xs, ys):
    assert len(xs) == len(ys)
    for (ax, mx), (ay, my) in zip(xs, ys):
        assert mx["example_ids"] == my["example_ids"] and mx["valid"] == my["valid"] and mx["bucket"] == my["bucket"]
        assert mx["skipped"] == my["skipped"]
        for k in ax:
            if k == "vision_inputs":
                for kk in ax[k]:
                    np.testing.assert_array_equal(ax[k][kk], ay[k][kk])
            else:
                np.testing.assert_array_equal(ax[k], ay[k])


def test_state_save_and_restore_continues_exactly(pool, tok):
    import json

    def make():
        return make_dataset(
            pool,
            tokenizer=tok,
            encoding=encoding(),
            batch_size=2,
            buckets=[(160, 16), (480, 32)],
            seed=4,
            num_epochs=2,
            remainder="pad",
        )

    it = iter(make())
    states, batches = [it.get_state()], []
    for batch in it:
        batches.append(batch)
        states.append(json.loads(json.dumps(it.get_state())))  # JSON-able
    assert any(s["pending"] for s in states)  # cuts with rows buffered in a bucket are exercised
    for cut in range(len(batches) + 1):
        fresh = iter(make())
        fresh.set_state(states[cut])
        same_batches(list(fresh), batches[cut:])


def test_too_long_raise_or_skip(pool, tok):
    buckets = [(160, 32)]  # findings / impression / difference rows need more tokens
    with pytest.raises(DoesNotFit, match="fit no bucket"):
        list(iter(make_dataset(pool, tokenizer=tok, encoding=encoding(), batch_size=2, buckets=buckets, seed=0)))
    ds = make_dataset(
        pool,
        tokenizer=tok,
        encoding=encoding(),
        batch_size=2,
        buckets=buckets,
        seed=0,
        too_long="skip",
        remainder="pad",
    )
    it = iter(ds)
    batches = list(it)
    kept = [eid for _, m in batches for eid, ok in zip(m["example_ids"], m["valid"]) if ok]
    skipped = [eid for _, m in batches for eid in m["skipped"]] + it.get_state()["skipped_ids"]
    assert skipped and it.get_state()["skipped"] == len(skipped)
    assert sorted(kept + skipped) == sorted(e.example_id for e in pool)
    for eid in skipped:
        with pytest.raises(DoesNotFit):
            reference_row(next(e for e in pool if e.example_id == eid), tok, buckets[0], encoding())


def test_custom_encode_fn_gives_the_same_batches(pool, tok):
    enc = encoding()
    kw = dict(batch_size=2, buckets=BUCKETS, seed=5, remainder="pad")
    custom = list(iter(make_dataset(pool, encode_fn=RowEncoder(tok, enc), **kw)))
    builtin = list(iter(make_dataset(pool, tokenizer=tok, encoding=enc, **kw)))
    same_batches(custom, builtin)


def test_worker_processes_cover_the_epoch_and_resume(pool, tok):
    import gc

    def make():
        return make_dataset(
            pool,
            tokenizer=tok,
            encoding=encoding(),
            batch_size=2,
            buckets=BUCKETS,
            seed=6,
            remainder="pad",
            worker_count=2,
        )

    it = iter(make())
    first = [next(it) for _ in range(2)]
    state = it.get_state()
    rest = list(it)
    it.close()
    ids = [eid for _, m in first + rest for eid, ok in zip(m["example_ids"], m["valid"]) if ok]
    assert sorted(ids) == sorted(e.example_id for e in pool)
    resumed = iter(make())
    resumed.set_state(state)
    again = list(resumed)
    resumed.close()
    same_batches(again, rest)
    del first, rest, again, it, resumed
    gc.collect()  # release grain's shared-memory arrays before the workers' segments go away
