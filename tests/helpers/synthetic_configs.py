"""Synthetic benchmark configs shared by the synthetic-data tests: the default config and one whose every
study shows a single finding type."""

from __future__ import annotations

from data_pipelines.synthetic.config import SyntheticConfig

CFG = SyntheticConfig()


def only_finding(name: str, **kw) -> SyntheticConfig:
    """Every study abnormal, its findings all of type `name`."""
    return SyntheticConfig(p_normal=0.0, max_finding_types=1, finding_weights=((name, 1e9),), **kw)
