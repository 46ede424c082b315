"""Scenes (unrendered ground truth: patient, pose, lesion specs, optional prior) and their rendering.

Sampling a scene is cheap (no pixels), so question generators can reject-sample scenes and render only the
accepted one. Each part of a scene draws from its own random stream (config.rng_for), so asking for a prior
never changes the current study.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synthetic.anatomy import SIDES, Anatomy, normal_ctr, normal_mediastinum, sample_anatomy
from data_pipelines.synthetic.config import ZONED, SyntheticConfig, rng_for, split_of
from data_pipelines.synthetic.findings import (
    LEVELED,
    SIZED,
    Finding,
    FindingSpec,
    apply_to_anatomy,
    place_findings,
    plan_findings,
    plan_instances,
    sized,
)
from data_pipelines.synthetic.geometry import tight_box
from data_pipelines.synthetic.lesions import render_finding
from data_pipelines.synthetic.render import Canvas, Nuisance, render_anatomy, sample_nuisance, to_display

CHANGES = ("new", "resolved", "increased", "decreased", "unchanged")
RESOLVABLE = ("Lung Opacity", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a study shows, before any geometry: enough to answer every VQA family (cheap to sample)."""

    seed: int
    index: int
    variant: int
    view: str
    findings: tuple[FindingSpec, ...]  # unplaced
    has_prior: bool = False
    prior_extents: tuple[float | None, ...] = ()  # per current finding: its extent in the prior, None if new
    resolved: tuple[FindingSpec, ...] = ()  # unplaced findings present only in the prior
    changes: tuple[tuple[str, str], ...] = ()  # (CheXpert name, change vs prior)

    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.name for s in self.findings))


@dataclasses.dataclass(frozen=True)
class Scene:
    plan: Plan
    anatomy: Anatomy  # finding effects (CTR, mediastinum, volume loss) applied
    nuisance: Nuisance
    findings: tuple[FindingSpec, ...]  # placed
    texture_seed: int
    prior: Scene | None = None

    @property
    def view(self) -> str:
        return self.nuisance.view

    @property
    def changes(self) -> tuple[tuple[str, str], ...]:
        return self.plan.changes


def plan_study(
    seed: int, index: int, config: SyntheticConfig, *, variant: int = 0, with_prior: bool | None = None
) -> Plan:
    """The plan of global study `index` (variant > 0: alternative studies of the same split, for rejection
    sampling). with_prior None draws a prior with probability config.prior_rate."""
    rng = rng_for(seed, index, "findings", variant)
    view = "PA" if rng.random() < 0.5 else "AP"
    specs = plan_findings(rng, config, split_of(index) == "heldout")
    draw = rng.random() < config.prior_rate
    if not (draw if with_prior is None else with_prior):
        return Plan(seed, index, variant, view, specs)
    extents, resolved, changes = plan_prior(rng_for(seed, index, "prior", variant), specs, config)
    return Plan(seed, index, variant, view, specs, True, extents, resolved, changes)


def plan_prior(rng: np.random.Generator, specs: tuple[FindingSpec, ...], config: SyntheticConfig):
    """Prior versions of the current findings, per name: new (absent before), increased / decreased (smaller /
    larger before), unchanged; plus possibly a finding that has resolved since.

    Returns (prior extent per current spec or None, resolved specs, changes)."""
    extents: list[float | None] = [None] * len(specs)
    changes: list[tuple[str, str]] = []
    names = tuple(dict.fromkeys(s.name for s in specs))
    for name in names:
        group = [k for k, s in enumerate(specs) if s.name == name]
        options = ["new", "unchanged"]
        if name in SIZED or name in LEVELED:
            if min(specs[k].extent for k in group) >= 0.3:
                options.append("increased")
            if max(specs[k].extent for k in group) <= 0.7:
                options.append("decreased")
        change = str(rng.choice(options))
        changes.append((name, change))
        if change == "new":
            continue
        delta = {"unchanged": 0.0, "increased": -rng.uniform(0.3, 0.6), "decreased": rng.uniform(0.3, 0.6)}[change]
        for k in group:
            extents[k] = float(np.clip(specs[k].extent + delta, 0.0, 1.0))
    resolved: list[FindingSpec] = []
    absent = [n for n in RESOLVABLE if n not in names]
    if absent and rng.random() < 0.35:
        name = str(rng.choice(absent))
        resolved = plan_instances(rng, name, config, False)
        changes.append((name, "resolved"))
    return tuple(extents), tuple(resolved), tuple(changes)


def realize(plan: Plan, config: SyntheticConfig) -> Scene:
    """Patient, pose and lesion geometry of a plan (and of its prior, sharing the patient and lesion sites)."""
    seed, index, variant, view = plan.seed, plan.index, plan.variant, plan.view
    anat_rng = rng_for(seed, index, "anatomy", variant)
    base = sample_anatomy(
        anat_rng, view=view, ctr=normal_ctr(anat_rng, view), mediastinum_half_width=normal_mediastinum(anat_rng)
    )
    anatomy = apply_to_anatomy(base, plan.findings, base.ctr, base.mediastinum_half_width)
    specs = place_findings(rng_for(seed, index, "placement", variant), plan.findings, anatomy, config)
    scene = Scene(
        plan=plan,
        anatomy=anatomy,
        findings=specs,
        nuisance=sample_nuisance(rng_for(seed, index, "nuisance", variant), view, config.difficulty),
        texture_seed=int(rng_for(seed, index, "texture", variant).integers(1 << 62)),
    )
    if not plan.has_prior:
        return scene
    kept = tuple(
        sized(dataclasses.replace(s, extent=e), config) for s, e in zip(specs, plan.prior_extents) if e is not None
    )
    prior_anatomy = apply_to_anatomy(base, kept + plan.resolved, base.ctr, base.mediastinum_half_width)
    resolved = place_findings(rng_for(seed, index, "prior_placement", variant), plan.resolved, prior_anatomy, config)
    prior = Scene(
        plan=plan,
        anatomy=prior_anatomy,
        findings=kept + resolved,
        nuisance=sample_nuisance(rng_for(seed, index, "prior_nuisance", variant), view, config.difficulty),
        texture_seed=int(rng_for(seed, index, "prior_texture", variant).integers(1 << 62)),
    )
    return dataclasses.replace(scene, prior=prior)


def sample_scene(
    seed: int, index: int, config: SyntheticConfig, *, variant: int = 0, with_prior: bool | None = None
) -> Scene:
    return realize(plan_study(seed, index, config, variant=variant, with_prior=with_prior), config)


@dataclasses.dataclass(frozen=True, eq=False)
class Rendered:
    image: np.ndarray  # float32 [H, W] in [0, 1], MONOCHROME2
    findings: tuple[Finding, ...]
    masks: tuple[np.ndarray, ...]  # bool [H, W] per finding
    anatomy_boxes: dict  # name -> tight pixel box: "right lung", "left lung", "heart"


def contrast(config: SyntheticConfig) -> float:
    """Lesion density multiplier of the difficulty knob: 1.0 (easy) .. 0.45 (hard)."""
    return 1.0 - 0.55 * config.difficulty


def render_scene(scene: Scene, config: SyntheticConfig) -> Rendered:
    """Pixels, exact masks and tight boxes of a scene (the prior is rendered separately)."""
    frame = scene.nuisance.frame(config.image_size)
    canvas = Canvas(frame)
    rng = np.random.default_rng(scene.texture_seed)
    anatomy_boxes = render_anatomy(canvas, scene.anatomy, rng)
    masks = [render_finding(canvas, spec, scene.anatomy, contrast(config)) for spec in scene.findings]
    image = to_display(canvas, scene.nuisance, rng)
    findings = tuple(_measure(spec, mask, scene.anatomy, frame, config) for spec, mask in zip(scene.findings, masks))
    return Rendered(image=image, findings=findings, masks=tuple(masks), anatomy_boxes=anatomy_boxes)


def _measure(spec: FindingSpec, mask: np.ndarray, anatomy: Anatomy, frame, config: SyntheticConfig) -> Finding:
    box = tight_box(mask)
    if box is None:
        raise RuntimeError(f"data_pipelines/synthetic/scene.py: {spec.name} ({spec.side}) rendered an empty mask")
    rows, cols = np.nonzero(mask)
    bx, by = frame.to_body(cols.mean() + 0.5, rows.mean() + 0.5)
    zone = ""
    if spec.side in SIDES and spec.name not in ("Support Devices",):
        zone = anatomy.lung(spec.side).zone_of(float(by))
    elif spec.side == "bilateral":
        zone = anatomy.right_lung.zone_of(float(by))
    if spec.name in ZONED and zone != spec.zone:
        raise RuntimeError(
            f"data_pipelines/synthetic/scene.py: {spec.name} planned in the {spec.zone} zone "
            f"rendered with its centroid in the {zone} zone"
        )
    size_mm = max(box[2] - box[0], box[3] - box[1]) * config.pixel_spacing_mm
    return Finding(
        name=spec.name,
        side=spec.side,
        zone=zone,
        bbox=box,
        severity=spec.severity,
        size_mm=float(round(size_mm, 1)),
        kind=spec.kind,
        hedged=spec.hedged,
    )
