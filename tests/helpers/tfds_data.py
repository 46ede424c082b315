"""The tiny synthetic dataset the TFDS and grain tests build, and the structural equality they compare with."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_pipelines.tfds import DmxSynthetic, build, synthetic_config

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


def build_synthetic(data_dir: Path):
    """Builds dmx_synthetic at SYN's sizes into data_dir: (data_dir, the builder config)."""
    config = synthetic_config(**SYN)
    build(DmxSynthetic, config, data_dir)
    return data_dir, config
