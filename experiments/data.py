"""Batch iterators for the stage runner: encoded rows in memory (synthetic default) or a grain pipeline (real data).

Rows come from the one encoder, data_pipelines.pipeline.encode (fixed seq_len and patch_budget per stage,
so every jitted step compiles once). Both iterators are deterministic in (seed, position) and expose
get_state/set_state for exact resume.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from data_pipelines.pipeline import DoesNotFit, RowEncoder, make_dataset, stack_rows


class EncodedBatches:
    """Cycles over pre-encoded rows in a seeded order; state = position (exact resume)."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int = 0, stack=stack_rows):
        if len(rows) < batch_size:
            raise ValueError(f"{len(rows)} examples cannot fill a batch of {batch_size}")
        self.rows, self.batch_size, self.seed, self.position, self.stack = rows, batch_size, seed, 0, stack

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self):
        return self

    def __next__(self):
        n = len(self.rows)
        idx = []
        for k in range(self.batch_size):
            p = self.position + k
            idx.append(self._order(p // n)[p % n])
        self.position += self.batch_size
        return self.stack([self.rows[i] for i in idx])

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])


class GrainBatches:
    """Batches of a real dataset from the grain pipeline (data_pipelines.pipeline): this process's shard,
    seeded shuffle reshuffled each epoch, images read and encoded per batch (optionally in worker processes),
    one static shape. Rows are per process (`per_process`): the step assembles the global batch."""

    per_process = True

    def __init__(self, source: GrainSource, batch_size: int, seed: int):
        if batch_size % jax.process_count():
            raise ValueError(f"batch size {batch_size} is not divisible by {jax.process_count()} processes")
        ds = make_dataset(
            source.examples,
            batch_size=batch_size // jax.process_count(),
            buckets=[(source.seq_len, source.patch_budget)],
            encode_fn=source.encode_fn,
            does_not_fit=(DoesNotFit,),
            seed=seed,
            num_epochs=None,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            worker_count=source.workers,
            too_long="skip" if source.skip_too_long else "raise",
        )
        self._it = iter(ds)

    def __iter__(self):
        return self

    def __next__(self):
        arrays, meta = next(self._it)
        return arrays, {"example_ids": meta["example_ids"], "rows": meta["rows"]}

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)


@dataclasses.dataclass(frozen=True)
class GrainSource:
    """What a stage reads from a real dataset: Examples (images as paths) and how to encode them."""

    examples: list
    encode_fn: RowEncoder  # encode_fn(example, seq_len=, patch_budget=) -> row
    seq_len: int
    patch_budget: int
    skip_too_long: bool = False
    workers: int = 0


@dataclasses.dataclass(frozen=True)
class IndexedSource:
    """An unbounded corpus whose row i is a pure function of i (the pretraining corpus): row_fn(i) -> row."""

    row_fn: Callable[[int], dict]


class IndexedBatches:
    """Rows position .. position + B - 1 of an IndexedSource, the next batch built on a background thread
    while the current step runs; state = position (exact resume)."""

    def __init__(self, source: IndexedSource, batch_size: int, stack=stack_rows):
        self.source, self.batch_size, self.stack, self.position = source, batch_size, stack, 0
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._next: tuple[int, concurrent.futures.Future] | None = None

    def _build(self, start: int):
        return self.stack([self.source.row_fn(i) for i in range(start, start + self.batch_size)])

    def __iter__(self):
        return self

    def __next__(self):
        start = self.position
        if self._next is None or self._next[0] != start:
            self._next = (start, self._pool.submit(self._build, start))
        batch = self._next[1].result()
        self.position = start + self.batch_size
        self._next = (self.position, self._pool.submit(self._build, self.position))
        return batch

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = int(state["position"])


def batches(source, batch_size: int, seed: int, stack=None):
    """Encoded rows (synthetic, in memory) -> EncodedBatches (rows -> (arrays, meta) by `stack`, default
    stack_rows); a GrainSource (real data) -> GrainBatches; an IndexedSource -> IndexedBatches."""
    if isinstance(source, GrainSource):
        return GrainBatches(source, batch_size, seed)
    if isinstance(source, IndexedSource):
        return IndexedBatches(source, batch_size, stack or stack_rows)
    return EncodedBatches(source, batch_size, seed, stack or stack_rows)
