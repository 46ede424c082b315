"""The grain pipeline on tiny synthetic data and on a TFDS source: bucket-shaped batches, shards, seeded
shuffles and epochs, saved and restored state, too-long rows, custom encoders and worker processes.

Reference: encode_example (the one encoder, which the experiment driver's encode_all uses too) on each example
alone, padded to the batch's bucket.
"""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers.tfds_data import SYN, build_synthetic, deep_equal

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
from data_pipelines.tfds import record_to_example
from data_pipelines.tokenizer import train_sentencepiece
from dmx_jax.model.config import tiny
from experiments.configs import tiny as tiny_experiment
from experiments.datasets import encode_all
from experiments.overrides import apply_overrides

MODEL = tiny()
MIN_PIXELS, MAX_PIXELS = 56 * 56, 64 * 64  # 64x64 images -> 16 patches each
BUCKETS = [(200, 32), (160, 16), (480, 32)]  # unsorted on purpose; tried as (160,16) < (200,32) < (480,32)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return build_synthetic(tmp_path_factory.mktemp("tfds"))


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
