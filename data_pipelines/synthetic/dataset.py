"""The synthetic CXR benchmark as data: deterministic studies and instruction Examples for every task.

    sample(seed, index, config)      -> SyntheticStudy   (global study index; its range fixes the split)
    study(split, index, config)      -> SyntheticStudy   (local index within a split)
    examples(split, index, config)   -> Example          (task drawn from config.task_mix unless given)
    SyntheticSource(split, config)   -> random-access source (len / getitem) of Examples

Splits are disjoint global index ranges (config.SPLIT_OFFSETS). In train/val/test the held-out combination
(config.heldout, e.g. a lung lesion in the left upper zone) never appears; every heldout study shows it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.boxes import format_boxes_text
from data_pipelines.schema import CHEXPERT_LABELS, TASKS, Box, Example
from data_pipelines.synthetic import grounding, reasoning, vqa
from data_pipelines.synthetic.config import TEST_CYCLE, SyntheticConfig, global_index, rng_for, split_of
from data_pipelines.synthetic.findings import Finding
from data_pipelines.synthetic.reports import make_report
from data_pipelines.synthetic.scene import Plan, Scene, plan_study, realize, render_scene

DATASET = "synthetic"
FINDINGS_PROMPTS = (
    "Generate the FINDINGS section of the radiology report for this chest X-ray.",
    "Describe the findings of this chest X-ray as a radiologist would.",
    "Write the findings section for this chest radiograph.",
)
IMPRESSION_PROMPTS = (
    "Generate the IMPRESSION section of the radiology report for this chest X-ray.",
    "What is the impression for this chest X-ray?",
    "Summarise this chest radiograph in an impression.",
)
CLASSIFICATION_PROMPTS = (
    "Which findings are present in this chest X-ray? List them separated by '|'.",
    "List the CheXpert findings present in this image, separated by '|'.",
)


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticStudy:
    """Ground truth of one rendered study (and of its prior when it has one)."""

    study_id: str
    split: str
    index: int  # global study index
    variant: int
    image: np.ndarray  # float32 [H, W] in [0, 1], MONOCHROME2
    view: str  # "PA" | "AP"
    ctr: float
    findings: tuple[Finding, ...]
    masks: tuple[np.ndarray, ...]  # bool [H, W], aligned with findings
    labels: np.ndarray  # [14] float32 CheXpert vector implied by the report text
    findings_text: str
    impression_text: str
    anatomy_boxes: dict
    pixel_spacing_mm: float
    changes: tuple[tuple[str, str], ...] = ()  # (CheXpert name, change vs prior)
    prior: SyntheticStudy | None = None
    scene: Scene | None = dataclasses.field(default=None, repr=False)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.image.shape[1]), int(self.image.shape[0])

    @property
    def report(self) -> dict[str, str]:
        return {"findings": self.findings_text, "impression": self.impression_text}

    def facts(self) -> vqa.Facts:
        return vqa.Facts(self.findings, self.view, self.changes)


def _render_study(scene: Scene, config: SyntheticConfig, report_stream: str, changes) -> SyntheticStudy:
    plan = scene.plan
    out = render_scene(scene, config)
    report = make_report(
        out.findings, scene.view, changes, rng_for(plan.seed, plan.index, report_stream, plan.variant), config
    )
    split = split_of(plan.index)
    suffix = "" if report_stream == "report" else "-prior"
    return SyntheticStudy(
        study_id=f"synthetic-{plan.seed}-{plan.index}-{plan.variant}{suffix}",
        split=split,
        index=plan.index,
        variant=plan.variant,
        image=out.image,
        view=scene.view,
        ctr=float(round(scene.anatomy.ctr, 3)),
        findings=out.findings,
        masks=out.masks,
        labels=report.labels,
        findings_text=report.findings,
        impression_text=report.impression,
        anatomy_boxes=out.anatomy_boxes,
        pixel_spacing_mm=config.pixel_spacing_mm,
        changes=tuple(changes),
        scene=scene,
    )


def render_plan(plan: Plan, config: SyntheticConfig) -> SyntheticStudy:
    scene = realize(plan, config)
    current = _render_study(scene, config, "report", plan.changes)
    if scene.prior is None:
        return current
    prior = _render_study(scene.prior, config, "prior_report", ())
    return dataclasses.replace(current, prior=prior)


def sample(
    seed: int, index: int, config: SyntheticConfig | None = None, *, variant: int = 0, with_prior: bool | None = None
) -> SyntheticStudy:
    """The study at global `index`: same (seed, index, config, variant, with_prior) -> identical bytes and text."""
    config = config or SyntheticConfig()
    return render_plan(plan_study(seed, index, config, variant=variant, with_prior=with_prior), config)


def study(split: str, index: int, config: SyntheticConfig | None = None, **kwargs) -> SyntheticStudy:
    config = config or SyntheticConfig()
    return sample(config.seed, global_index(split, index, config), config, **kwargs)


# -------------------------------------------------------------------------------------------- examples


def balanced_question(
    config: SyntheticConfig, gidx: int, family: str, rng: np.random.Generator, with_prior: bool
) -> tuple[vqa.Question, Plan, str | None]:
    """Answer first (uniform over the family's answer space), then the first study variant that can ask a
    question with that answer (CLEVR-style rejection). Falls back to any answer if none turns up within
    config.max_rejections variants. Returns (question, plan, the drawn target answer or None)."""
    target = None
    if family in vqa.ANSWERS:
        space = vqa.ANSWERS[family]
        target = space[int(rng.integers(len(space)))]
    first: tuple[vqa.Question, Plan] | None = None
    for variant in range(config.max_rejections):
        plan = plan_study(config.seed, gidx, config, variant=variant, with_prior=with_prior or None)
        facts = vqa.Facts(plan.findings, plan.view, plan.changes)
        questions = vqa.instantiate(family, facts)
        q = vqa.choose_question(questions, target, rng)
        if q is not None:
            return q, plan, target
        if first is None and questions:
            first = (vqa.choose_question(questions, None, rng), plan)  # type: ignore[assignment]
    if first is None:  # the family is never askable here: fall back to the always-askable view question
        plan = plan_study(config.seed, gidx, config, with_prior=with_prior or None)
        first = (vqa.instantiate("view", vqa.Facts(plan.findings, plan.view, plan.changes))[0], plan)
    return first[0], first[1], target


def _box(f: Finding) -> Box:
    x0, y0, x1, y1 = f.bbox
    label = f"{f.phrase} ({f.location})" if f.location else f.phrase
    return Box(float(x0), float(y0), float(x1), float(y1), label=label)


def _finding_meta(f: Finding) -> dict:
    return {
        "name": f.name,
        "side": f.side,
        "zone": f.zone,
        "bbox": list(f.bbox),
        "severity": f.severity,
        "size_mm": f.size_mm,
        "kind": f.kind,
        "hedged": f.hedged,
    }


def classification_target(findings) -> str:
    names = [n for n in CHEXPERT_LABELS if any(f.name == n for f in findings)]
    return "|".join(names) if names else "No Finding"


def examples(split: str, index: int, config: SyntheticConfig | None = None, *, task: str | None = None) -> Example:
    """The Example at a split's local index; the task is drawn from config.task_mix (the test split: the
    stratified config.task_cycle()) unless given."""
    config = config or SyntheticConfig()
    gidx = global_index(split, index, config)
    rng = rng_for(config.seed, gidx, "task")
    names, probs = config.task_probabilities()
    chosen = names[int(rng.choice(len(names), p=probs))]  # drawn in every split (keeps the random streams)
    if split == "test" and config.test_task_mix is not None:
        chosen = config.task_cycle()[index % TEST_CYCLE]
    task = task or chosen
    if task not in TASKS:
        raise ValueError(f"data_pipelines/synthetic/dataset.py: unknown task {task!r}; expected one of {TASKS}")
    qrng = rng_for(config.seed, gidx, "question")
    program, family, question_type, trace_answer = None, None, None, None
    if task in ("vqa", "difference"):
        families = vqa.VQA_FAMILIES if task == "vqa" else vqa.DIFFERENCE_FAMILIES
        if task == "vqa" and config.vqa_family_weights:
            weights = dict(config.vqa_family_weights)
            w = np.array([weights.get(f, 1.0) for f in families], np.float64)
            family = families[int(qrng.choice(len(families), p=w / w.sum()))]
        else:
            family = families[int(qrng.integers(len(families)))]
        question, plan, _ = balanced_question(config, gidx, family, qrng, task == "difference")
        s = render_plan(plan, config)
        answer = vqa.execute(question.program, s.facts())
        if answer != question.answer:
            raise RuntimeError(
                f"data_pipelines/synthetic/dataset.py: program {question.program} answers "
                f"{answer!r} on the rendered study but {question.answer!r} on its plan"
            )
        prompt, target, program, question_type = question.text, answer, question.program, question.question_type
        family = question.family
        if task == "difference":
            steps = reasoning.difference_steps(s, question)
            hits = [f for f in s.findings if f.name in {n for n, _ in s.changes}]
        else:
            steps = reasoning.question_steps(s, question, s.image_size[0], config.vqa_trace)
            name = dict(question.program).get("filter_name")
            hits = [f for f in s.findings if f.name == name] if name else list(s.findings)
        boxes = tuple(_box(f) for f in hits)
        answer_is_box = False
    else:
        s = sample(config.seed, gidx, config)
        answer_is_box = False
        if task in ("findings", "impression", "classification"):
            prompts = {
                "findings": FINDINGS_PROMPTS,
                "impression": IMPRESSION_PROMPTS,
                "classification": CLASSIFICATION_PROMPTS,
            }[task]
            prompt = prompts[int(qrng.integers(len(prompts)))]
            target = {
                "findings": s.findings_text,
                "impression": s.impression_text,
                "classification": classification_target(s.findings),
            }[task]
            steps = reasoning.survey_steps(s)
            boxes = tuple(_box(f) for f in s.findings)
        else:  # grounding / referring
            item = (
                grounding.grounding_item(s, qrng, located=config.grounding_locations, trace=config.grounding_trace)
                if task == "grounding"
                else grounding.referring_item(s, qrng)
            )
            prompt, target, steps, answer_is_box = item.prompt, item.target, list(item.steps), item.answer_is_box
            boxes = tuple(Box(*map(float, b), label=item.phrase) for b in item.boxes)
            question_type = task
            if task == "grounding" and config.trace_box_jitter:  # the trace's answer can only be a copy
                moved = reasoning.jitter_boxes(
                    steps, rng_for(config.seed, gidx, "trace_jitter"), config.trace_box_jitter, s.image_size[0]
                )
                steps = [reasoning.Step(st.text, tuple(moved[b] for b in st.boxes)) for st in steps]
                trace_answer = format_boxes_text([moved[tuple(b)] for b in item.boxes])
    images = (s.prior.image, s.image) if task == "difference" else (s.image,)
    size = s.image_size
    trace_answer = trace_answer or target
    meta = {
        "reasoning": reasoning.render_trace(steps, trace_answer),
        "reasoning_steps": tuple((st.text, st.boxes) for st in steps),
        "reasoning_negatives": reasoning.negatives(steps, trace_answer, size[0], answer_is_box),
        "study_index": gidx,
        "variant": s.variant,
        "view": s.view,
        "ctr": s.ctr,
        "findings": [_finding_meta(f) for f in s.findings],
        "pixel_spacing_mm": s.pixel_spacing_mm,
        "box_convention": "pixel xyxy of the stored image; x_max, y_max are exclusive pixel edges",
    }
    if program is not None:
        meta["program"] = program
        meta["family"] = family
    if task == "difference":
        meta["changes"] = s.changes
        meta["prior_findings"] = [_finding_meta(f) for f in s.prior.findings]
    return Example(
        example_id=f"{DATASET}/{split}/{index}/{task}",
        dataset=DATASET,
        task=task,
        images=images,
        image_sizes=tuple(size for _ in images),
        prompt=prompt,
        target=target,
        boxes=boxes,
        labels=s.labels.copy(),
        question_type=question_type,
        split=split,
        meta=meta,
    )


def all_task_examples(split: str, index: int, config: SyntheticConfig | None = None) -> tuple[Example, ...]:
    """One Example per task for the same local index (VQA/difference may use other study variants)."""
    config = config or SyntheticConfig()
    return tuple(examples(split, index, config, task=t) for t, _ in config.task_mix)


class SyntheticSource:
    """Random-access source of Examples of one split (len / getitem), e.g. for grain.MapDataset.source."""

    def __init__(self, split: str, config: SyntheticConfig | None = None, *, task: str | None = None):
        self.config = config or SyntheticConfig()
        self.split = split
        self.task = task
        self._len = self.config.split_size(split)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Example:
        return examples(self.split, int(index), self.config, task=self.task)

    def __repr__(self) -> str:
        return f"SyntheticSource(split={self.split!r}, len={self._len}, task={self.task!r})"
