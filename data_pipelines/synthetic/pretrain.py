"""The pretraining corpus of the shipped miniature base: tasks that teach a model to see, on studies of its own.

Studies come from the synthetic renderer under PRETRAIN_SEED, a seed no benchmark run uses (benchmark seeds
are the run's `seed`, 0, 1, 2, ...), so no pretraining study is a benchmark train or test study. Prompts are
written here, in templates of their own (never the benchmark's), and answers use the Qwen2.5-VL box
convention ('[x1, y1, x2, y2]' in pixels of the image the model sees; the row encoder rescales them):

    describe   every finding with its severity, side, zone and box ('no abnormal findings' when normal)
    detect     a finding phrase in, all its boxes out ('none' when absent; present / absent balanced)
    presence   yes / no over all 13 CheXpert findings, balanced
    count      instances of one finding phrase (0..)
    side       right / left / bilateral of a present finding
    view       PA / AP

    pretrain_example(index, image_size, mix) -> Example      (pure function of the index and the mix)

A CorpusMix sets the task weights and how often a detection prompt names a present finding; the shipped
base reads the general mix (CORPUS_MIX) and then a detection-heavy one (FOCUS_MIX) on fresh studies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.boxes import format_box_text, format_boxes_text
from data_pipelines.schema import Box, Example
from data_pipelines.synthetic.config import SPLIT_OFFSETS, SyntheticConfig, rng_for
from data_pipelines.synthetic.dataset import sample
from data_pipelines.synthetic.findings import FINDING_NAMES, KIND_PHRASES, PHRASES
from data_pipelines.synthetic.vqa import _with_article, name_phrase

PRETRAIN_SEED = 1_000_003
DATASET = "synthetic-pretrain"
TASKS = ("describe", "detect", "presence", "count", "side", "view")


@dataclasses.dataclass(frozen=True)
class CorpusMix:
    """Which task a pretraining row asks: (task, weight) pairs, and the chance that a detection prompt names a
    phrase present on the study (when it has one) rather than an absent one."""

    task_weights: tuple[tuple[str, float], ...]
    detect_present: float = 0.5

    def __post_init__(self):
        bad = [t for t, _ in self.task_weights if t not in TASKS]
        if bad or not self.task_weights or min(w for _, w in self.task_weights) < 0:
            raise ValueError(f"CorpusMix.task_weights={self.task_weights!r}: tasks from {TASKS}, weights >= 0")
        if not 0.0 <= self.detect_present <= 1.0:
            raise ValueError(f"CorpusMix.detect_present={self.detect_present} must lie in [0, 1]")


CORPUS_MIX = CorpusMix(
    (("describe", 0.22), ("detect", 0.34), ("presence", 0.26), ("count", 0.06), ("side", 0.07), ("view", 0.05))
)
FOCUS_MIX = CorpusMix((("describe", 0.2), ("detect", 0.5), ("presence", 0.2), ("side", 0.1)), detect_present=0.8)
PROMPTS = {
    "describe": (
        "Report every abnormality you can see, each with its location and box.",
        "Survey this radiograph: name each abnormality, where it lies, and its box.",
    ),
    "detect": (
        "Detect all instances of {phrase}. Reply with boxes, or none.",
        "Mark every {phrase} on this film with a box (none if absent).",
    ),
    "presence": (
        "Does this film show {a_phrase}? Reply yes or no.",
        "Yes or no: is {a_phrase} visible on this radiograph?",
    ),
    "count": ("Count the instances of {phrase} on this film.",),
    "side": ("On which side of the patient is the {phrase}?",),
    "view": ("Is this projection PA or AP?",),
}
# every phrase a detection prompt may name: the CheXpert names' phrases plus the lesion and device kinds
DETECT_PHRASES: tuple[str, ...] = tuple(sorted(set(PHRASES.values()) | set(KIND_PHRASES.values())))


def _detect_groups(findings) -> dict[str, list]:
    """phrase -> the findings it names: a kind phrase ('lung mass') its kind; a CheXpert phrase its name."""
    out: dict[str, list] = {p: [] for p in DETECT_PHRASES}
    for f in findings:
        out[f.phrase].append(f)
        if f.kind and PHRASES[f.name] != f.phrase:
            out[PHRASES[f.name]].append(f)
    return out


def _describe(f) -> str:
    sev = f"{f.severity} " if f.severity else ""
    return f"{sev}{f.phrase}{f.where} {format_box_text(f.bbox)}"


def _boxes(findings) -> tuple[Box, ...]:
    return tuple(Box(*map(float, f.bbox), label=f.phrase) for f in findings)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def pretrain_example(index: int, image_size: int = 128, mix: CorpusMix = CORPUS_MIX) -> Example:
    """The pretraining Example at `index` (>= 0): one study rendered under PRETRAIN_SEED, one task of `mix`."""
    config = SyntheticConfig(image_size=image_size, seed=PRETRAIN_SEED)
    gidx = SPLIT_OFFSETS["train"] + int(index)
    s = sample(PRETRAIN_SEED, gidx, config)
    rng = rng_for(PRETRAIN_SEED, gidx, "question")
    names, weights = zip(*mix.task_weights)
    task = names[int(rng.choice(len(names), p=np.asarray(weights) / sum(weights)))]
    present = {f.name for f in s.findings}
    hits: list = []
    if task == "describe":
        prompt = _pick(rng, PROMPTS[task])
        body = "; ".join(_describe(f) for f in s.findings) or "no abnormal findings"
        target, hits = f"{s.view} view. {body}.", list(s.findings)
    elif task == "detect":
        groups = _detect_groups(s.findings)
        shown = [p for p in DETECT_PHRASES if groups[p]]
        absent = [p for p in DETECT_PHRASES if not groups[p]]
        phrase = _pick(rng, shown if shown and rng.random() < mix.detect_present else absent)
        hits = groups[phrase]
        prompt = _pick(rng, PROMPTS[task]).format(phrase=phrase)
        target = format_boxes_text([f.bbox for f in hits]) or "none"
    elif task == "presence":
        want = bool(rng.random() < 0.5)
        pool = [n for n in FINDING_NAMES if (n in present) == want] or list(FINDING_NAMES)
        name = _pick(rng, pool)
        prompt = _pick(rng, PROMPTS[task]).format(a_phrase=_with_article(name_phrase(name)))
        target, hits = ("yes" if name in present else "no"), [f for f in s.findings if f.name == name]
    elif task == "count":
        groups = _detect_groups(s.findings)
        shown = [p for p in DETECT_PHRASES if groups[p]]
        phrase = _pick(rng, shown if shown and rng.random() < 0.6 else DETECT_PHRASES)
        hits = groups[phrase]
        prompt, target = _pick(rng, PROMPTS[task]).format(phrase=phrase), str(len(hits))
    elif task == "side" and any(f.side for f in s.findings):
        f = _pick(rng, [f for f in s.findings if f.side])
        sides = {g.side for g in s.findings if g.phrase == f.phrase and g.side}
        hits = [g for g in s.findings if g.phrase == f.phrase]
        prompt = _pick(rng, PROMPTS["side"]).format(phrase=f.phrase)
        target = "bilateral" if "bilateral" in sides or sides == {"right", "left"} else f.side
    else:  # view (also the side task of a study without findings)
        task, prompt, target = "view", PROMPTS["view"][0], s.view
    return Example(
        example_id=f"{DATASET}/{index}/{task}",
        dataset=DATASET,
        task="vqa",
        images=(s.image,),
        image_sizes=(s.image_size,),
        prompt=prompt,
        target=target,
        boxes=_boxes(hits),
        labels=s.labels.copy(),
        question_type=task,
        split="train",
        meta={
            "study_index": gidx,
            "variant": s.variant,
            "view": s.view,
            "pretrain_task": task,
            "findings": [
                {"name": f.name, "phrase": f.phrase, "side": f.side, "zone": f.zone, "bbox": list(f.bbox)}
                for f in s.findings
            ],
        },
    )


FOCUS_START = 1 << 37  # the focus stage's studies: past any corpus-stage index
PROBE_START = 1 << 39  # probe studies: far past any index a pretraining run reaches


def probe_examples(n_studies: int, image_size: int = 128) -> list[Example]:
    """Held-out pretraining-style prompts on studies PROBE_START.. : per study one presence question (yes for
    even studies when it has a finding, no for odd ones; task 'vqa') and, when it has findings, one
    detection prompt for a present phrase (task 'grounding'). Ids end in the CheXpert name asked about. All
    presence questions come first, then all detection prompts, so neighbouring prompts of one task are about
    different studies (the images-swapped control gives each prompt its neighbour's image)."""
    config = SyntheticConfig(image_size=image_size, seed=PRETRAIN_SEED)
    out, detect = [], []
    for j in range(n_studies):
        gidx = SPLIT_OFFSETS["train"] + PROBE_START + j
        s = sample(PRETRAIN_SEED, gidx, config)
        rng = rng_for(PRETRAIN_SEED, gidx, "question")
        present = sorted({f.name for f in s.findings}, key=FINDING_NAMES.index)
        pool = present if j % 2 == 0 and present else [n for n in FINDING_NAMES if n not in present]
        name = _pick(rng, pool)
        common = dict(
            dataset=DATASET, images=(s.image,), image_sizes=(s.image_size,), labels=s.labels.copy(), split="test"
        )
        out.append(
            Example(
                example_id=f"{DATASET}/probe/{j}/presence/{name}",
                task="vqa",
                prompt=PROMPTS["presence"][0].format(a_phrase=_with_article(name_phrase(name))),
                target="yes" if name in present else "no",
                question_type="presence",
                **common,
            )
        )
        if s.findings:
            f = _pick(rng, list(s.findings))
            hits = _detect_groups(s.findings)[f.phrase]
            detect.append(
                Example(
                    example_id=f"{DATASET}/probe/{j}/detect/{f.name}",
                    task="grounding",
                    prompt=PROMPTS["detect"][0].format(phrase=f.phrase),
                    target=format_boxes_text([h.bbox for h in hits]),
                    question_type="detect",
                    boxes=_boxes(hits),
                    **common,
                )
            )
    return out + detect
