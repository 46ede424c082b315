"""make_dataset: a random-access source of Examples or TFDS records -> a grain IterDataset of static-shape batches.

    ds = make_dataset(source, tokenizer=tok, encoding=EncodingConfig(vision=model_cfg.vision, max_pixels=...),
                      batch_size=8, buckets=[(512, 256), (1024, 1024)], seed=0, num_epochs=None,
                      shard_index=jax.process_index(), shard_count=jax.process_count())
    it = iter(ds)
    arrays, meta = next(it)      # arrays: input_ids [B, seq_len], pixel_values [B, patch_budget, D], ...
    state = it.get_state()       # JSON-able; iter(ds).set_state(state) continues exactly

Steps: per-process shard (records shard_index::shard_count: disjoint, together complete) -> seeded shuffle,
reshuffled every epoch -> repeat num_epochs (None: forever) -> per example: record -> Example, decode
images, preprocess, render, pad to the first bucket that fits (too_long='raise' raises DoesNotFit,
'skip' drops it and reports its id in the next batch's meta['skipped']) -> batches of one bucket only
(BucketBatchIterDataset) -> optional worker processes (grain mp_prefetch, worker w encodes rows w::workers).

Note for multi-host training: each process draws its own bucket sequence; processes that must step in
lockstep on one global batch shape should use a single bucket (or agree on shapes outside this pipeline).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain

from data_pipelines.pipeline.batching import BucketBatchIterDataset, Encoded
from data_pipelines.pipeline.encode import DoesNotFit, EncodingConfig, check_buckets, encode_to_bucket
from data_pipelines.schema import Example

TOO_LONG = ("raise", "skip")


def as_example(item: Any) -> Example:
    """An Example, or a record from a dmx_synthetic / dmx_adapter tfds data source (decoded here)."""
    if isinstance(item, Example):
        return item
    if isinstance(item, Mapping) and "example_id" in item and "images" in item:
        from data_pipelines.tfds.records import record_to_example  # noqa: PLC0415 heavy

        return record_to_example(item)
    raise TypeError(f"make_dataset: source items must be Examples or dmx tfds records, got {type(item).__name__}")


class EncodeToBucket:
    """source item -> Encoded (picklable, for worker processes).

    With encode_fn(example, seq_len=..., patch_budget=...) -> row, buckets are tried in order and an
    exception of a type in `does_not_fit` moves on to the next one; otherwise the built-in encoder is used.
    """

    def __init__(
        self,
        buckets,
        tokenizer,
        encoding: EncodingConfig | None,
        encode_fn: Callable | None,
        does_not_fit: tuple[type[Exception], ...],
        too_long: str,
    ):
        self.buckets, self.tokenizer, self.encoding = buckets, tokenizer, encoding
        self.encode_fn, self.does_not_fit, self.too_long = encode_fn, does_not_fit, too_long

    def _encode(self, example: Example) -> tuple[int, dict]:
        if self.encode_fn is None:
            return encode_to_bucket(example, self.tokenizer, self.encoding, self.buckets)
        for k, (seq_len, patch_budget) in enumerate(self.buckets):
            try:
                return k, self.encode_fn(example, seq_len=seq_len, patch_budget=patch_budget)
            except self.does_not_fit:
                continue
        raise DoesNotFit(
            f"example {example.example_id}: fits no bucket (seq_len, patch_budget) in {list(self.buckets)}"
        )

    def __call__(self, item: Any) -> Encoded:
        example = as_example(item)
        try:
            bucket, row = self._encode(example)
        except (DoesNotFit, *self.does_not_fit):
            if self.too_long == "raise":
                raise
            return Encoded(-1, example.example_id)
        return Encoded(bucket, example.example_id, row)


def make_dataset(
    source: Sequence,
    *,
    batch_size: int,
    buckets: Sequence[Sequence[int]],
    tokenizer=None,
    encoding: EncodingConfig | None = None,
    encode_fn: Callable | None = None,
    does_not_fit: tuple[type[Exception], ...] = (DoesNotFit,),
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    too_long: str = "raise",
    remainder: str = "drop",
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """A grain IterDataset of (arrays, meta) batches whose arrays have one of the bucket shapes.

    source: random access (len / getitem) of Examples or dmx tfds records (tfds.data_source, SyntheticSource,
      a list). tokenizer + encoding (EncodingConfig) select the built-in encoder; encode_fn replaces it.
    buckets: (seq_len, patch_budget) pairs, tried in sorted order; the first that fits is used.
    seed: shuffle seed (0 <= seed < 2**32), the same on every process (each shuffles its own shard).
    remainder: 'drop' or 'pad' the partial batches left when a finite stream ends (see batching.py).
    worker_count: 0 runs in this process; N > 0 starts N grain worker processes (absl flags must be parsed).
    read_options: threads / prefetch of the row reader (default 2 threads, 2 * batch_size rows ahead).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"make_dataset: need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    if too_long not in TOO_LONG:
        raise ValueError(f"make_dataset: too_long must be one of {TOO_LONG}, got {too_long!r}")
    if encode_fn is None and (tokenizer is None or encoding is None):
        raise ValueError("make_dataset: pass tokenizer and encoding (EncodingConfig), or an encode_fn")
    if worker_count < 0:
        raise ValueError(f"make_dataset: worker_count must be >= 0, got {worker_count}")
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"make_dataset: num_epochs must be positive or None, got {num_epochs}")
    buckets = check_buckets(buckets)
    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"make_dataset: shard {shard_index} of {shard_count} of a {len(source)}-item source is empty")
    if shuffle:
        ds = ds.shuffle(seed=seed)  # reading past one epoch's length reshuffles with seed + epoch
    ds = ds.repeat(num_epochs)
    ds = ds.map(EncodeToBucket(buckets, tokenizer, encoding, encode_fn, tuple(does_not_fit), too_long))
    batches = BucketBatchIterDataset(
        ds, buckets=buckets, batch_size=batch_size, remainder=remainder, read_options=read_options
    )
    if worker_count:
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return batches
