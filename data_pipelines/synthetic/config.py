"""Configuration of the synthetic CXR benchmark and its fixed split layout."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.schema import TASKS

GROUNDING_TRACES = ("anatomy_first", "phrase_first", "box_first")  # reasoning-trace styles of grounding items
VQA_TRACES = ("evidence", "question_first")  # reasoning-trace styles of VQA items

# Detector field of view across the image width at magnification 1; sets the mm per pixel (2.81 mm at 128^2).
FOV_MM = 360.0

# Global index ranges of the splits: disjoint, each 2**40 long. A split's local index i is global SPLIT_OFFSET + i.
SPLIT_STRIDE = 1 << 40
SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")
SPLIT_OFFSETS: dict[str, int] = {name: k * SPLIT_STRIDE for k, name in enumerate(SPLITS)}

DEFAULT_TASK_MIX: tuple[tuple[str, float], ...] = (
    ("findings", 0.15),
    ("impression", 0.10),
    ("vqa", 0.35),
    ("difference", 0.10),
    ("grounding", 0.12),
    ("referring", 0.08),
    ("classification", 0.10),
)

# Tasks of the test split (held-out evaluation), assigned in a fixed stratified cycle (exact shares over every
# 50 consecutive indices): 600 test examples give 216 grounding, 312 VQA-type (vqa 276, classification 36)
# and 72 report prompts, enough to resolve stage differences of ~0.1 with paired CIs.
DEFAULT_TEST_TASK_MIX: tuple[tuple[str, float], ...] = (
    ("findings", 0.06),
    ("impression", 0.06),
    ("vqa", 0.46),
    ("grounding", 0.36),
    ("classification", 0.06),
)
TEST_CYCLE = 50

# The CoGenT-style held-out attribute combination: (CheXpert name, patient side, zone).
DEFAULT_HELDOUT = ("Lung Lesion", "left", "upper")


# findings placed in one lung zone (data_pipelines.synthetic.findings draws them; a held-out combination names one)
ZONED = ("Lung Lesion", "Consolidation", "Pneumonia", "Lung Opacity", "Atelectasis")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes the synthetic studies; studies are a pure function of (config, seed, index).

    image_size: square render side in pixels, 64..512.
    difficulty: 0 (high-contrast lesions, little noise and pose variation) .. 1 (faint lesions, noisy, varied).
    p_normal: probability that a study has no finding.
    max_finding_types: 1..this many distinct finding types per abnormal study.
    finding_weights: relative weight per CheXpert name when choosing finding types (missing names: weight 1).
    prior_rate: probability that a study comes with a prior (for the comparison sentence and difference VQA).
    hedge_rate: probability a hedgeable finding is reported with a hedge (label -1).
    negative_rate: probability that an absent observation gets a pertinent negative sentence (label 0).
    min_box_px: smallest lesion box side at 128^2 (scaled with image_size).
    task_mix: (task, weight) pairs for `examples` (train / val / heldout: drawn at random per index).
    vqa_family_weights: (family, weight) pairs for drawing the question family of "vqa" examples (families not
      listed: weight 1; empty: uniform over vqa.VQA_FAMILIES, the original draw). Weighting "presence",
      "location" and "zone" up gives more image-answerable rows per finding.
    test_task_mix: (task, weight) pairs of the test split, assigned by a fixed stratified cycle of TEST_CYCLE
      indices (exact shares; None: the test split draws from task_mix like the others).
    max_rejections: study variants tried per balanced question before accepting any answer.
    grounding_locations: grounding prompts name the finding's side and zone as well (the benchmark before
      2026-12-04); False: the finding only, so the box has to come from the image.
    grounding_trace: reasoning-trace style of grounding items, "anatomy_first", "phrase_first" or "box_first"
      (grounding.grounding_item).
    vqa_trace: reasoning-trace style of VQA items: "evidence" (the evidence steps alone) or "question_first"
      (a first step that names what the question asks for, answer-bearing evidence next; reasoning.question_steps).
    trace_box_jitter: grounding traces cite each box with its edges moved by up to this many pixels and their
      boxed answer copies the moved boxes, so the answer can only come from the trace (0: the true boxes; the
      example's target and the reward keep the true boxes).
    heldout: (name, side, zone) never rendered in train/val/test and always present in the heldout split.
    split sizes: the length of each split's index range used by sources (indices beyond raise).
    """

    image_size: int = 128
    seed: int = 0
    difficulty: float = 0.3
    p_normal: float = 0.3
    max_finding_types: int = 3
    finding_weights: tuple[tuple[str, float], ...] = ()
    prior_rate: float = 0.25
    hedge_rate: float = 0.15
    negative_rate: float = 0.5
    min_box_px: float = 8.0
    task_mix: tuple[tuple[str, float], ...] = DEFAULT_TASK_MIX
    vqa_family_weights: tuple[tuple[str, float], ...] = ()
    test_task_mix: tuple[tuple[str, float], ...] | None = DEFAULT_TEST_TASK_MIX
    heldout: tuple[str, str, str] = DEFAULT_HELDOUT
    train_size: int = 1_000_000
    val_size: int = 2_000
    test_size: int = 2_000
    heldout_size: int = 1_000
    max_rejections: int = 256
    grounding_locations: bool = False
    grounding_trace: str = "anatomy_first"
    vqa_trace: str = "evidence"
    trace_box_jitter: int = 0

    def __post_init__(self):
        where = "data_pipelines/synthetic/config.py: SyntheticConfig"
        if not 64 <= self.image_size <= 512:
            raise ValueError(f"{where}.image_size must be in [64, 512], got {self.image_size}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"{where}.difficulty must be in [0, 1], got {self.difficulty}")
        for name in ("p_normal", "prior_rate", "hedge_rate", "negative_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}.{name} must be a probability in [0, 1], got {value}")
        if not 1 <= self.max_finding_types <= 4:
            raise ValueError(f"{where}.max_finding_types must be in [1, 4], got {self.max_finding_types}")
        if self.grounding_trace not in GROUNDING_TRACES:
            raise ValueError(f"{where}.grounding_trace must be one of {GROUNDING_TRACES}, got {self.grounding_trace!r}")
        if self.vqa_trace not in VQA_TRACES:
            raise ValueError(f"{where}.vqa_trace must be one of {VQA_TRACES}, got {self.vqa_trace!r}")
        if not 0 <= self.trace_box_jitter <= 16:
            raise ValueError(f"{where}.trace_box_jitter must be in [0, 16] pixels, got {self.trace_box_jitter}")
        if self.seed < 0:
            raise ValueError(f"{where}.seed must be non-negative, got {self.seed}")
        if not self.task_mix or any(w < 0 for _, w in self.task_mix) or sum(w for _, w in self.task_mix) <= 0:
            raise ValueError(f"{where}.task_mix needs non-negative weights with a positive sum, got {self.task_mix}")

        unknown = [t for t, _ in self.task_mix if t not in TASKS]
        if unknown:
            raise ValueError(f"{where}.task_mix has unknown tasks {unknown}; expected names from {TASKS}")
        if any(w < 0 for _, w in self.vqa_family_weights):
            raise ValueError(f"{where}.vqa_family_weights must be non-negative, got {self.vqa_family_weights}")
        if self.test_task_mix is not None:
            mix = self.test_task_mix
            if (
                not mix
                or any(w < 0 for _, w in mix)
                or sum(w for _, w in mix) <= 0
                or any(t not in TASKS for t, _ in mix)
            ):
                raise ValueError(
                    f"{where}.test_task_mix needs known tasks with non-negative weights and a positive sum, got {mix}"
                )
        name, side, zone = self.heldout
        if name not in ZONED or side not in ("right", "left") or zone not in ("upper", "middle", "lower"):
            raise ValueError(
                f"{where}.heldout must be (zone-placed finding in {ZONED}, right|left, "
                f"upper|middle|lower), got {self.heldout}"
            )
        for split in SPLITS:
            if not 0 < self.split_size(split) <= SPLIT_STRIDE:
                raise ValueError(f"{where}.{split}_size must be in (0, 2**40], got {self.split_size(split)}")

    @property
    def pixel_spacing_mm(self) -> float:
        return FOV_MM / self.image_size

    @property
    def min_box(self) -> float:
        """Smallest lesion box side in pixels at this image size."""
        return self.min_box_px * self.image_size / 128.0

    def split_size(self, split: str) -> int:
        return getattr(self, f"{check_split(split)}_size")

    def task_cycle(self) -> tuple[str, ...]:
        """The test split's tasks for TEST_CYCLE consecutive indices: largest-remainder counts of
        test_task_mix, in a fixed shuffled order (so any prefix of whole cycles has the exact shares)."""
        names = [t for t, _ in self.test_task_mix]
        w = np.array([w for _, w in self.test_task_mix], dtype=np.float64)
        quota = w / w.sum() * TEST_CYCLE
        counts = np.floor(quota).astype(int)
        for k in np.argsort(-(quota - counts), kind="stable")[: TEST_CYCLE - counts.sum()]:
            counts[k] += 1
        cycle = [n for n, c in zip(names, counts) for _ in range(c)]
        order = np.random.default_rng(np.random.SeedSequence([int(self.seed), 20261203])).permutation(TEST_CYCLE)
        return tuple(cycle[k] for k in order)

    def task_probabilities(self) -> tuple[tuple[str, ...], np.ndarray]:
        names = tuple(t for t, _ in self.task_mix)
        weights = np.array([w for _, w in self.task_mix], dtype=np.float64)
        return names, weights / weights.sum()


def check_split(split: str) -> str:
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"data_pipelines/synthetic: unknown split {split!r}; expected one of {SPLITS}")
    return split


def global_index(split: str, index: int, config: SyntheticConfig) -> int:
    """The global study index of a split's local index (split ranges are disjoint)."""
    size = config.split_size(split)
    if not 0 <= index < size:
        raise IndexError(f"data_pipelines/synthetic: index {index} outside split {split!r} of size {size}")
    return SPLIT_OFFSETS[split] + int(index)


def split_of(global_idx: int) -> str:
    k = int(global_idx) // SPLIT_STRIDE
    if not 0 <= k < len(SPLITS):
        raise IndexError(f"data_pipelines/synthetic: global index {global_idx} is outside every split range")
    return SPLITS[k]


# Independent random streams of one study, so that adding a prior or a question never changes the current image.
STREAMS = {
    "findings": 1,
    "prior": 2,
    "anatomy": 3,
    "placement": 4,
    "nuisance": 5,
    "texture": 6,
    "prior_placement": 7,
    "prior_nuisance": 8,
    "prior_texture": 9,
    "report": 10,
    "prior_report": 11,
    "task": 12,
    "question": 13,
    "trace_jitter": 14,
}


def rng_for(seed: int, index: int, stream: str, variant: int = 0) -> np.random.Generator:
    """A numpy Generator that depends only on (seed, global index, variant, stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), int(variant), STREAMS[stream]]))
