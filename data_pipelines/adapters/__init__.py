"""Real-dataset adapters: each `load_<name>(root, *, split=None, tasks=...)` yields schema.Example records.

Columns are read by name (never position); a missing column raises MissingColumnError naming the file.
Common keywords: split ('train' / 'val' / 'test' or an alias such as 'validate'), tasks (a subset of the
source's tasks), missing_images ('error' | 'skip' | 'allow'; 'allow' keeps the path with the size from
the source's metadata, or (0, 0) when unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from data_pipelines.adapters._common import MissingColumnError
from data_pipelines.adapters.chestxray14 import load_chestxray14
from data_pipelines.adapters.chexpert import load_chexpert, load_chexpert_plus
from data_pipelines.adapters.generic import GenericColumns, load_generic
from data_pipelines.adapters.iu_xray import load_iu_xray
from data_pipelines.adapters.mimic_cxr import load_mimic_cxr
from data_pipelines.adapters.ms_cxr import load_ms_cxr
from data_pipelines.adapters.report_sections import ReportSections, parse_report_sections
from data_pipelines.adapters.vindr import load_vindr
from data_pipelines.adapters.vqa import load_medical_diff_vqa, load_mimic_cxr_vqa, load_slake, load_vqa_rad
from data_pipelines.schema import Example

ADAPTERS: dict[str, Callable[..., Iterator[Example]]] = {
    "mimic_cxr": load_mimic_cxr,
    "chexpert": load_chexpert,
    "chexpert_plus": load_chexpert_plus,
    "vindr": load_vindr,
    "ms_cxr": load_ms_cxr,
    "chestxray14": load_chestxray14,
    "iu_xray": load_iu_xray,
    "mimic_cxr_vqa": load_mimic_cxr_vqa,
    "medical_diff_vqa": load_medical_diff_vqa,
    "vqa_rad": load_vqa_rad,
    "slake": load_slake,
    "generic": load_generic,
}


def load_dataset(name: str, root, **kwargs) -> Iterator[Example]:
    """ADAPTERS[name](root, **kwargs) with a clear error for an unknown name."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown dataset adapter {name!r}; available: {sorted(ADAPTERS)}")
    return ADAPTERS[name](root, **kwargs)


__all__ = [
    "ADAPTERS",
    "GenericColumns",
    "MissingColumnError",
    "ReportSections",
    "load_dataset",
    "parse_report_sections",
    *(f.__name__ for f in ADAPTERS.values()),
]
