"""Read one shard of a converted parameter straight from a safetensors file.

A converter transform (`mapping.TABLE`'s to_jax) is described as a *layout*: target dims in order, grouped by
the HF axes they come from. Each group is `(hf_axes, target_sizes)`:
- one HF axis split into several target dims (`[n*h, d] -> [d, n, h]`: group `((0,), (n, h))`),
- several HF axes merged into one target dim (patch embed `[o, c, t, p, p] -> [c*t*p*p, o]`).
The target array is `hf.transpose(concat(hf_axes)).reshape(concat(target_sizes))`. For a target index (a
tuple of slices, what `jax.make_array_from_callback` hands over) `read_block` issues reads of exactly the
shard's elements: a split group gives one contiguous HF range per combination of the partial dims before its
last partial dim (e.g. 3 ranges for the vision qkv kernel sharded over heads). A partial *merged* group is
the one case that over-reads: it reads the covering rows of its leading HF axis and cuts (no table row is
sharded on a merged dim today: the patch-embed input dim is replicated by the rule table).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

Group = tuple[tuple[int, ...], tuple[int, ...]]  # (HF axes, target sizes)
Layout = tuple[Group, ...]
Reader = Callable[[tuple[slice, ...]], np.ndarray]  # HF-order index -> block of the on-disk tensor


def identity(hf_shape: Sequence[int]) -> Layout:
    return tuple(((a,), (int(n),)) for a, n in enumerate(hf_shape))


def transpose2(hf_shape: Sequence[int]) -> Layout:
    o, i = hf_shape
    return ((1,), (i,)), ((0,), (o,))


def target_shape(layout: Layout, hf_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The converted shape, or None when the layout does not fit this HF shape."""
    axes = [a for g, _ in layout for a in g]
    if sorted(axes) != list(range(len(hf_shape))):
        return None
    for hf_axes, sizes in layout:
        if math.prod(hf_shape[a] for a in hf_axes) != math.prod(sizes) or (len(hf_axes) > 1 and len(sizes) > 1):
            return None
    return tuple(s for _, sizes in layout for s in sizes)


def _range(s: slice, n: int) -> tuple[int, int]:
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError(f"strided shard index {s} is not supported")
    return start, stop


def _split_pieces(n_hf: int, sizes: Sequence[int], ranges: Sequence[tuple[int, int]]):
    """(hf slices, target-shaped piece shape, out index) for one HF axis split into `sizes`."""
    partial = [i for i, (r, n) in enumerate(zip(ranges, sizes)) if r != (0, n)]
    j = partial[-1] if partial else 0
    inner = math.prod(sizes[j + 1 :])
    strides = [math.prod(sizes[i + 1 :]) for i in range(len(sizes))]
    lo_j, hi_j = ranges[j]
    pieces = []
    for outer in itertools.product(*(range(lo, hi) for lo, hi in ranges[:j])):
        base = sum(o * s for o, s in zip(outer, strides))
        hf = (slice(base + lo_j * inner, base + hi_j * inner),)
        shape = (1,) * j + (hi_j - lo_j,) + tuple(sizes[j + 1 :])
        out = tuple(slice(o - lo, o - lo + 1) for o, (lo, _) in zip(outer, ranges)) + (slice(None),) * (len(sizes) - j)
        pieces.append((hf, shape, out, (slice(None),) * len(sizes)))
    return pieces


def _merge_pieces(hf_sizes: Sequence[int], n: int, rng: tuple[int, int]):
    """One piece for several HF axes merged into one target dim of size n (covering rows when partial)."""
    lo, hi = rng
    if rng == (0, n):
        return [((slice(None),) * len(hf_sizes), (n,), (slice(None),), (slice(None),))]
    inner = math.prod(hf_sizes[1:])
    r0, r1 = lo // inner, -(-hi // inner)
    hf = (slice(r0, r1),) + (slice(None),) * (len(hf_sizes) - 1)
    return [(hf, ((r1 - r0) * inner,), (slice(None),), (slice(lo - r0 * inner, hi - r0 * inner),))]


def read_block(read: Reader, hf_shape: Sequence[int], layout: Layout, index: Sequence[slice]) -> np.ndarray:
    """The converted tensor's block at `index` (target order), reading only that block from the file."""
    shape = target_shape(layout, hf_shape)
    assert shape is not None and len(index) == len(shape), (layout, hf_shape, index)
    ranges = [_range(s, n) for s, n in zip(index, shape)]
    per_group, k = [], 0
    for hf_axes, sizes in layout:
        rs = ranges[k : k + len(sizes)]
        k += len(sizes)
        per_group.append(
            _split_pieces(hf_shape[hf_axes[0]], sizes, rs)
            if len(hf_axes) == 1
            else _merge_pieces([hf_shape[a] for a in hf_axes], sizes[0], rs[0])
        )
    perm = [a for g, _ in layout for a in g]
    out = None
    for combo in itertools.product(*per_group):
        hf_index: list[slice] = [slice(None)] * len(hf_shape)
        for (hf_axes, _), (hf, _, _, _) in zip(layout, combo):
            for a, s in zip(hf_axes, hf):
                hf_index[a] = s
        block = np.asarray(read(tuple(hf_index))).transpose(perm)
        block = block.reshape(tuple(d for p in combo for d in p[1]))[tuple(s for p in combo for s in p[3])]
        if out is None:
            out = np.empty(tuple(hi - lo for lo, hi in ranges), block.dtype)
        out[tuple(s for p in combo for s in p[2])] = block
    return out
