"""Same-bucket batching over a random-access stream of encoded rows, with exactly resumable state.

Input: a grain MapDataset whose element k is `Encoded` (bucket index + row, or a skipped example id).
Rows are read in index order (threaded prefetch) and held in one buffer per bucket; a buffer that reaches
batch_size is emitted at once, so every batch has one bucket's fixed shapes. At the end of a finite stream
the partial buffers are dropped (remainder='drop') or filled to batch_size by repeating their last row with
a zero loss mask and meta['valid'] False (remainder='pad').

State (JSON): {'parent': the row reader's state, 'position': rows read, 'pending': [[bucket, position], ...]
buffered rows in arrival order, 'skipped': count}. Restoring re-reads the buffered rows by position
(deterministic), so a restored iterator yields exactly the batches the original would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines.pipeline.encode import Bucket, DoesNotFit

REMAINDERS = ("drop", "pad")


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One stream element: bucket >= 0 with its row, or bucket -1 for a skipped (too long) example."""

    bucket: int
    example_id: str
    row: dict | None = None


def stack_rows(rows: Sequence[dict]) -> tuple[dict, dict]:
    """Encoded rows of one shape -> (arrays [B, ...] incl. vision_inputs, host meta with example ids and rows)."""
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k not in ("meta", "vision_inputs")}
    arrays["vision_inputs"] = {k: np.stack([r["vision_inputs"][k] for r in rows]) for k in rows[0]["vision_inputs"]}
    return arrays, {"example_ids": [r["meta"]["example_id"] for r in rows], "rows": [r["meta"] for r in rows]}


def trim_right_padding(arrays: dict, multiple: int) -> dict:
    """A right-padded training batch cut to its longest row rounded up to `multiple` tokens (never longer than it
    was). The cut columns are padding: under causal attention with a zero loss mask they change neither the
    loss nor its gradient, only the cost; each distinct length compiles the step once. Batches that are not
    right-padded (left-padded prompts) and multiple <= 0 come back unchanged."""
    mask = arrays["attention_mask"]
    t = mask.shape[1]
    if multiple <= 0 or not np.all(mask[:, 0]):
        return arrays
    used = np.flatnonzero(np.any(mask, axis=0))
    keep = min(t, -(-(int(used[-1]) + 1) // multiple) * multiple)
    if keep == t:
        return arrays
    out = {**arrays, "positions": arrays["positions"][..., :keep]}  # positions [B, 3, T]
    for k in ("input_ids", "attention_mask", "loss_mask"):
        out[k] = arrays[k][:, :keep]
    return out


def collate(rows: Sequence[dict], bucket: Bucket, valid: Sequence[bool], skipped: Sequence[str]) -> tuple[dict, dict]:
    """Rows of one bucket -> stack_rows plus the bucket, which rows are real and which examples were skipped."""
    arrays, meta = stack_rows(rows)
    return arrays, {**meta, "bucket": tuple(bucket), "valid": list(valid), "skipped": list(skipped)}


def _pad_row(row: dict) -> dict:
    return {**row, "loss_mask": np.zeros_like(row["loss_mask"])}


class BucketBatchIterDataset(grain.IterDataset):
    """Batches of batch_size same-bucket rows from a MapDataset of `Encoded` elements."""

    def __init__(
        self,
        rows: grain.MapDataset,
        *,
        buckets: Sequence[Bucket],
        batch_size: int,
        remainder: str = "drop",
        read_options: grain.ReadOptions | None = None,
    ):
        super().__init__(rows)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
        self.buckets, self.batch_size, self.remainder = tuple(buckets), int(batch_size), remainder
        self.read_options = read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain worker slicing (mp_prefetch): worker w reads rows w::workers of this process's stream."""
        if sequential_slice:
            raise NotImplementedError("BucketBatchIterDataset supports only interleaved worker slices")
        self._parents = (self._parent.slice(sl),)

    def __iter__(self) -> BucketBatchIterator:
        return BucketBatchIterator(self)

    def __str__(self) -> str:
        return f"BucketBatchIterDataset(buckets={self.buckets}, batch_size={self.batch_size}, {self.remainder})"


MAX_SKIPS_IN_A_ROW = 10_000  # skipped examples without a batch in between before giving up


class BucketBatchIterator(grain.DatasetIterator):
    def __init__(self, ds: BucketBatchIterDataset):
        self._rows: grain.MapDataset = ds._parent
        super().__init__(self._rows.to_iter_dataset(ds.read_options).__iter__())
        self._ds = ds
        self._position = 0
        self._pending: list[tuple[int, int, dict]] = []  # (bucket, position, row) in arrival order
        self._skipped = 0
        self._skipped_ids: list[str] = []  # since the last emitted batch
        self._exhausted = False

    def _emit(self, bucket: int) -> tuple[dict, dict]:
        take = [p for p in self._pending if p[0] == bucket][: self._ds.batch_size]
        taken = {p[1] for p in take}
        self._pending = [p for p in self._pending if p[1] not in taken]
        rows = [p[2] for p in take]
        valid = [True] * len(rows) + [False] * (self._ds.batch_size - len(rows))
        rows += [_pad_row(rows[-1])] * (self._ds.batch_size - len(rows))
        skipped, self._skipped_ids = self._skipped_ids, []
        return collate(rows, self._ds.buckets[bucket], valid, skipped)

    def __next__(self) -> tuple[dict, dict]:
        while not self._exhausted:
            try:
                item: Encoded = next(self._parent)
            except StopIteration:
                self._exhausted = True
                break
            self._position += 1
            if item.bucket < 0:
                self._skipped += 1
                self._skipped_ids.append(item.example_id)
                if len(self._skipped_ids) >= MAX_SKIPS_IN_A_ROW:  # e.g. an endless stream where nothing fits
                    raise DoesNotFit(
                        f"{len(self._skipped_ids)} examples in a row fit no bucket "
                        f"{list(self._ds.buckets)} (last: {item.example_id}); raise the sequence / "
                        f"patch budgets"
                    )
                continue
            self._pending.append((item.bucket, self._position - 1, item.row))
            if sum(p[0] == item.bucket for p in self._pending) == self._ds.batch_size:
                return self._emit(item.bucket)
        if self._ds.remainder == "pad" and self._pending:
            return self._emit(min(p[0] for p in self._pending))
        raise StopIteration

    def get_state(self) -> dict[str, Any]:
        return {
            "parent": self._parent.get_state(),
            "position": self._position,
            "pending": [[b, pos] for b, pos, _ in self._pending],
            "skipped": self._skipped,
            "skipped_ids": list(self._skipped_ids),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._position, self._skipped = int(state["position"]), int(state["skipped"])
        self._skipped_ids = list(state["skipped_ids"])
        self._exhausted = False
        self._pending = []
        for b, pos in state["pending"]:
            item: Encoded = self._rows[int(pos)]
            if item.bucket != int(b):
                raise ValueError(
                    f"restored state: row {pos} is now in bucket {item.bucket}, was {b} "
                    f"(the source, tokenizer or encoding changed since the state was saved)"
                )
            self._pending.append((int(b), int(pos), item.row))

    def __str__(self) -> str:
        return f"BucketBatchIterator(position={self._position}, pending={len(self._pending)})"
