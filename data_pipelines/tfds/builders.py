"""TFDS builders (array_record, no TensorFlow) for the synthetic benchmark and for the real-dataset adapters.

    config = synthetic_config(seed=0, image_size=64, train_size=100, val_size=10, test_size=10, heldout_size=10)
    builder = DmxSynthetic(data_dir=d, config=config, file_format="array_record"); builder.download_and_prepare()
    source = tfds.data_source(f"dmx_synthetic/{config.name}", data_dir=d, split="train")   # random access
    example = record_to_example(source[i])

    config = adapter_config("iu_xray", root)                      # any data_pipelines.adapters name
    DmxAdapter(data_dir=d, config=config, file_format="array_record").download_and_prepare()

Records keep generation order (disable_shuffling): synthetic record i of a split is examples(split, i, ...).
Adapter splits are the Example.split values the adapter yields (restricted to config.splits when given).
`build(...)` does both steps and always asks for array_record (TFRECORD, tfds' default, needs TensorFlow).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from data_pipelines.adapters import ADAPTERS, load_dataset
from data_pipelines.schema import Example
from data_pipelines.synthetic import SPLITS, SyntheticConfig, examples
from data_pipelines.tfds.records import BIT_DEPTHS, example_to_record, features

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
# tfds derives a builder's code_path via importlib_resources (not installed, not a tfds requirement) for a class
# inside a package; giving the path directly avoids that import (it is only used to look for checksums.tsv).
_CODE_PATH = epath.Path(__file__)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:8]


def _check_bit_depth(bit_depth, where: str) -> None:
    if bit_depth not in BIT_DEPTHS:
        raise ValueError(f"{where}.bit_depth must be one of {BIT_DEPTHS}, got {bit_depth!r}")


# ------------------------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(eq=False)
class DmxSyntheticConfig(tfds.core.BuilderConfig):
    """synthetic: the generator's config (seed, image size, split sizes, ...); task: None draws from task_mix.
    bit_depth: 16 (default; float renders quantised to 1/65535), 8, or 'auto'. splits: which splits to write."""

    synthetic: SyntheticConfig = SyntheticConfig(train_size=64, val_size=16, test_size=16, heldout_size=16)
    task: str | None = None
    bit_depth: int | str = 16
    splits: tuple[str, ...] = SPLITS


def synthetic_config(
    *,
    name: str | None = None,
    task: str | None = None,
    bit_depth: int | str = 16,
    splits: tuple[str, ...] = SPLITS,
    **synthetic_fields,
) -> DmxSyntheticConfig:
    """A DmxSyntheticConfig from SyntheticConfig fields (seed, image_size, train_size, ...).

    The default name encodes seed, image size, split sizes, task and bit depth, plus a digest of the whole
    SyntheticConfig, so different generators never share a directory.
    """
    syn = SyntheticConfig(**synthetic_fields)
    _check_bit_depth(bit_depth, "synthetic_config")
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"synthetic_config: splits must be a non-empty subset of {SPLITS}, got {splits}")
    if name is None:
        sizes = "-".join(str(syn.split_size(s)) for s in splits)
        fields = {**dataclasses.asdict(syn), "task": task, "bit_depth": bit_depth, "splits": list(splits)}
        name = f"seed{syn.seed}_{syn.image_size}px_n{sizes}_{task or 'mix'}_{bit_depth}bit_{_digest(fields)}"
    return DmxSyntheticConfig(
        name=name,
        synthetic=syn,
        task=task,
        bit_depth=bit_depth,
        splits=tuple(splits),
        description=f"synthetic CXR benchmark {syn!r}, task={task}, bit_depth={bit_depth}",
    )


class DmxSynthetic(tfds.core.GeneratorBasedBuilder):
    """The procedural synthetic CXR benchmark as self-contained records (PNG images inside)."""

    VERSION = tfds.core.Version(VERSION)
    code_path = _CODE_PATH
    BUILDER_CONFIGS = [
        synthetic_config(name="tiny", image_size=64, train_size=64, val_size=16, test_size=16, heldout_size=16)
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo(builder=self): dataset_info_from_configs looks for README files beside the class
        return tfds.core.DatasetInfo(
            builder=self,
            features=features(),
            disable_shuffling=True,
            description="dmx-jax synthetic chest X-ray benchmark",
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self.builder_config.splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        cfg: DmxSyntheticConfig = self.builder_config
        for i in range(cfg.synthetic.split_size(split)):
            ex = examples(split, i, cfg.synthetic, task=cfg.task)
            yield ex.example_id, example_to_record(ex, cfg.bit_depth)


# --------------------------------------------------------------------------------------------- adapters


@dataclasses.dataclass(eq=False)
class DmxAdapterConfig(tfds.core.BuilderConfig):
    """adapter: a data_pipelines.adapters.ADAPTERS name; root: its dataset folder; kwargs: extra adapter
    keywords as (key, value) pairs (JSON values); splits: keep only these Example.split values (None: all)."""

    adapter: str = ""
    root: str = ""
    kwargs: tuple[tuple[str, Any], ...] = ()
    splits: tuple[str, ...] | None = None
    bit_depth: int | str = "auto"


def adapter_config(
    adapter: str,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    splits: tuple[str, ...] | None = None,
    bit_depth: int | str = "auto",
    **adapter_kwargs,
) -> DmxAdapterConfig:
    """A DmxAdapterConfig. The default name is the adapter name plus a digest of its keywords and splits
    (the root is left out so a moved dataset keeps its name; pass `name` to tell two roots apart)."""
    if adapter not in ADAPTERS:
        raise KeyError(f"adapter_config: unknown adapter {adapter!r}; available: {sorted(ADAPTERS)}")
    _check_bit_depth(bit_depth, "adapter_config")
    kwargs = tuple(sorted((k, os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in adapter_kwargs.items()))
    if name is None:
        extra = {"kwargs": [list(kv) for kv in kwargs], "splits": splits, "bit_depth": bit_depth}
        name = adapter if not kwargs and splits is None and bit_depth == "auto" else f"{adapter}_{_digest(extra)}"
    return DmxAdapterConfig(
        name=name,
        adapter=adapter,
        root=os.fspath(root),
        kwargs=kwargs,
        splits=None if splits is None else tuple(splits),
        bit_depth=bit_depth,
        description=f"{adapter} from {os.fspath(root)} with {dict(kwargs)}",
    )


class DmxAdapter(tfds.core.GeneratorBasedBuilder):
    """A real dataset read through its adapter; image files are read with load_image and stored as PNG."""

    VERSION = tfds.core.Version(VERSION)
    code_path = _CODE_PATH

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=features(),
            disable_shuffling=True,
            description="dmx-jax real-dataset adapter records",
        )

    def _examples(self) -> Iterator[Example]:
        cfg: DmxAdapterConfig = self.builder_config
        if cfg is None or not cfg.adapter:
            raise ValueError("DmxAdapter needs config=adapter_config(adapter, root, ...)")
        return load_dataset(cfg.adapter, cfg.root, **dict(cfg.kwargs))

    def _split_generators(self, dl_manager):
        cfg: DmxAdapterConfig = self.builder_config
        present: list[str] = []
        for ex in self._examples():  # one metadata pass (images are paths here, not read)
            if ex.split not in present and (cfg.splits is None or ex.split in cfg.splits):
                present.append(ex.split)
        if not present:
            raise ValueError(
                f"DmxAdapter {cfg.name}: adapter {cfg.adapter!r} at {cfg.root} yielded no examples"
                f"{'' if cfg.splits is None else f' in splits {cfg.splits}'}"
            )
        return {split: self._generate_examples(split) for split in present}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        cfg: DmxAdapterConfig = self.builder_config
        for ex in self._examples():
            if ex.split == split:
                yield ex.example_id, example_to_record(ex, cfg.bit_depth)


# ------------------------------------------------------------------------------------------------ helpers


def build(
    builder_cls: type[tfds.core.GeneratorBasedBuilder], config: tfds.core.BuilderConfig, data_dir: str | os.PathLike
) -> tfds.core.GeneratorBasedBuilder:
    """Prepare (or reuse) the dataset in array_record format and return the builder."""
    builder = builder_cls(data_dir=os.fspath(data_dir), config=config, file_format=FILE_FORMAT)
    builder.download_and_prepare()
    return builder
