"""CheXpert-named findings: vocabulary, the unrendered finding spec, the rendered finding, and scene sampling.

A FindingSpec is one lesion instance (a bilateral effusion is two specs; multiple nodules are several specs;
pulmonary edema is one bilateral spec). Its zone is planned for zone-placed findings and the renderer
guarantees that the mask centroid falls in that zone; for the others the zone is measured after rendering.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipelines.schema import CHEXPERT_LABELS
from data_pipelines.synthetic.anatomy import SIDES, ZONES, Anatomy
from data_pipelines.synthetic.config import FOV_MM, SyntheticConfig
from data_pipelines.synthetic.geometry import ellipse_extent

FINDING_NAMES: tuple[str, ...] = CHEXPERT_LABELS[1:]  # every CheXpert observation except "No Finding"

PHRASES = {
    "Enlarged Cardiomediastinum": "enlarged cardiomediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung opacity",
    "Lung Lesion": "lung nodule",
    "Edema": "pulmonary edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural effusion",
    "Pleural Other": "pleural thickening",
    "Fracture": "rib fracture",
    "Support Devices": "support device",
}
KIND_PHRASES = {
    "nodule": "lung nodule",
    "mass": "lung mass",
    "pacemaker": "pacemaker",
    "venous catheter": "venous catheter",
    "enteric tube": "enteric tube",
}
KINDS = {"Lung Lesion": ("nodule", "mass"), "Support Devices": ("pacemaker", "venous catheter", "enteric tube")}
LEVEL_WORDS = ("mild", "moderate", "severe")
SIZE_WORDS = ("small", "moderate", "large")
LEVELED = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
)
SIZED = ("Lung Lesion", "Pneumothorax", "Pleural Effusion")
NOT_LATERAL = ("Enlarged Cardiomediastinum", "Cardiomegaly")
NODULE_MAX_MM = 30.0  # a lung lesion up to 3 cm is a nodule, larger is a mass


@dataclasses.dataclass(frozen=True)
class FindingSpec:
    """One planned lesion instance in the body frame (see module docstring)."""

    name: str
    side: str  # "right" | "left" | "bilateral" | "" (patient side; "" for midline findings)
    zone: str = ""  # planned zone for ZONED findings
    extent: float = 0.5  # 0..1: severity / size within the finding's range
    kind: str = ""
    hedged: bool = False
    x: float = 0.5  # body-frame anchor
    y: float = 0.5
    size: float = 0.0  # principal size in body units (radius, level, collapse...), set by `sized`
    core: float = 0.0  # airspace opacities: radius of the disk they always contain, set by `sized`
    angle: float = 0.0
    texture: int = 0

    @property
    def severity(self) -> str:
        """mild/moderate/severe (LEVELED), small/moderate/large (SIZED), else ''."""
        if self.name == "Lung Lesion":
            return "small" if self.kind == "nodule" else ("moderate" if self.extent < 0.5 else "large")
        words = LEVEL_WORDS if self.name in LEVELED else SIZE_WORDS if self.name in SIZED else None
        return words[min(int(self.extent * 3), 2)] if words else ""

    @property
    def phrase(self) -> str:
        return KIND_PHRASES[self.kind] if self.kind else PHRASES[self.name]


@dataclasses.dataclass(frozen=True)
class Finding:
    """A rendered finding: CheXpert name, patient side, zone of its mask centroid, tight pixel box, size."""

    name: str
    side: str
    zone: str
    bbox: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max pixel edges of the mask (x_max exclusive)
    severity: str
    size_mm: float  # longest box side times the pixel spacing
    kind: str = ""
    hedged: bool = False

    @property
    def phrase(self) -> str:
        return KIND_PHRASES[self.kind] if self.kind else PHRASES[self.name]

    @property
    def location(self) -> str:
        """'right lower zone', 'left', 'bilateral' or '' - the words that locate the finding in text."""
        if self.side in SIDES and self.zone:
            return f"{self.side} {self.zone} zone"
        return self.side

    @property
    def where(self) -> str:
        """' in the right lower zone', ' on the left', ' in both lungs' or ''."""
        if self.side in SIDES and self.zone:
            return f" in the {self.location}"
        return {"right": " on the right", "left": " on the left", "bilateral": " in both lungs"}.get(self.side, "")


# ------------------------------------------------------------------------------------------ sampling


def min_diameter(config: SyntheticConfig) -> float:
    """Smallest lesion extent in body units whose box still spans config.min_box pixels at the smallest scale
    (1.5 px of slack at 128^2, scaled with the image like min_box, so sizes in mm do not depend on resolution)."""
    return (config.min_box + 1.5 * config.image_size / 128.0) / config.image_size / 0.96


def _weights(config: SyntheticConfig) -> np.ndarray:
    table = dict(config.finding_weights)
    unknown = set(table) - set(FINDING_NAMES)
    if unknown:
        raise ValueError(f"data_pipelines/synthetic: SyntheticConfig.finding_weights has unknown names {unknown}")
    w = np.array([float(table.get(n, 1.0)) for n in FINDING_NAMES])
    return w / w.sum()


def _sides(rng: np.random.Generator, p_bilateral: float) -> tuple[str, ...]:
    u = rng.random()
    return ("right", "left") if u < p_bilateral else (("right",) if u < (1 + p_bilateral) / 2 else ("left",))


def plan_findings(rng: np.random.Generator, config: SyntheticConfig, heldout_split: bool) -> tuple[FindingSpec, ...]:
    """Finding types and per-instance attributes (no positions yet). The held-out (name, side, zone) never
    appears unless heldout_split, where it always appears."""
    held_name, held_side, held_zone = config.heldout
    names: list[str] = []
    if heldout_split:
        names.append(held_name)
    if rng.random() >= config.p_normal or heldout_split:
        k = int(rng.integers(1, config.max_finding_types + 1))
        pool = [
            str(n)
            for n in rng.choice(FINDING_NAMES, size=len(FINDING_NAMES), replace=False, p=_weights(config))
            if n not in names
        ]
        names += pool[: max(k - len(names), 0)]
    specs: list[FindingSpec] = []
    for name in sorted(names, key=FINDING_NAMES.index):
        specs += plan_instances(rng, name, config, heldout_split and name == held_name)
    return tuple(specs)


def plan_instances(
    rng: np.random.Generator, name: str, config: SyntheticConfig, force_heldout: bool = False
) -> list[FindingSpec]:
    """The instances of one finding type: sides, planned zones, extents, kinds, hedging."""
    hedged = name != "Support Devices" and rng.random() < config.hedge_rate
    tex = int(rng.integers(1 << 31))
    top = 0.5 if hedged else 1.0  # hedges are for subtle findings: the lower half of the severity range
    zones = ZONES[1:] if name == "Atelectasis" else ZONES

    def zone_for(side: str, first: bool) -> tuple[str, str]:
        """(side, zone) avoiding the held-out combination; the held-out one itself when forced."""
        if force_heldout and first:
            return config.heldout[1], config.heldout[2]
        while True:
            zone = str(rng.choice(zones))
            if (name, side, zone) != tuple(config.heldout):
                return side, zone

    if name == "Lung Lesion":
        kind = "nodule" if rng.random() < 0.5 else "mass"
        count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])) if kind == "nodule" else 1
        sides = [str(rng.choice(SIDES)) for _ in range(count)]
        return [
            FindingSpec(name, *zone_for(side, i == 0), rng.random() * top, kind, hedged, texture=tex + i)
            for i, side in enumerate(sides)
        ]
    if name in ("Consolidation", "Pneumonia", "Lung Opacity", "Atelectasis"):
        return [
            FindingSpec(name, *zone_for(side, i == 0), rng.random() * top, "", hedged, texture=tex + i)
            for i, side in enumerate(_sides(rng, 0.2))
        ]
    if name == "Pleural Effusion":
        return [
            FindingSpec(name, side, "", rng.random() * top, "", hedged, texture=tex + i)
            for i, side in enumerate(_sides(rng, 0.3))
        ]
    if name in ("Pneumothorax", "Fracture", "Pleural Other"):
        return [FindingSpec(name, str(rng.choice(SIDES)), "", rng.random() * top, "", hedged, texture=tex)]
    if name == "Edema":
        return [FindingSpec(name, "bilateral", "", rng.random() * top, "", hedged, texture=tex)]
    if name == "Support Devices":
        kind = str(rng.choice(KINDS[name]))
        side = {
            "pacemaker": "left" if rng.random() < 0.8 else "right",
            "venous catheter": "right" if rng.random() < 0.7 else "left",
            "enteric tube": "",
        }[kind]
        return [FindingSpec(name, side, "", rng.random(), kind, False, texture=tex)]
    if name in NOT_LATERAL:
        return [FindingSpec(name, "", "", rng.random() * top, "", hedged, texture=tex)]
    raise ValueError(f"data_pipelines/synthetic/findings.py: no planner for finding {name!r}")


def apply_to_anatomy(
    anatomy: Anatomy, specs: tuple[FindingSpec, ...], normal_ctr: float, normal_mediastinum: float
) -> Anatomy:
    """Findings that change the anatomy: cardiomegaly (CTR), widened mediastinum, atelectatic volume loss."""
    ctr, mw = normal_ctr, normal_mediastinum
    lungs = {"right": anatomy.right_lung, "left": anatomy.left_lung}
    for s in specs:
        if s.name == "Cardiomegaly":
            ctr = 0.55 + 0.15 * s.extent
        elif s.name == "Enlarged Cardiomediastinum":
            mw = 0.075 + 0.035 * s.extent
        elif s.name == "Atelectasis" and s.extent > 1 / 3:  # volume loss raises the hemidiaphragm
            lung = lungs[s.side]  # (the dome only: zones, which use the base, stay put)
            lungs[s.side] = dataclasses.replace(lung, dome=lung.dome - (0.01 + 0.02 * s.extent))
    return dataclasses.replace(
        anatomy, ctr=ctr, mediastinum_half_width=mw, right_lung=lungs["right"], left_lung=lungs["left"]
    )


def lesion_diameter_mm(spec: FindingSpec, config: SyntheticConfig) -> float:
    lo = min_diameter(config) * FOV_MM
    if spec.kind == "nodule":
        return lo + (NODULE_MAX_MM - 1.0 - lo) * spec.extent
    return max(lo, NODULE_MAX_MM + 3.0) + 32.0 * spec.extent


def _inside(anatomy: Anatomy, side: str, x: float, y: float, r: float, margin: float, avoid_heart: bool) -> bool:
    lung = anatomy.lung(side)
    pts_x = np.array([x, x - r, x + r, x, x], np.float32)
    pts_y = np.array([y, y, y, y - r, y + r], np.float32)
    f = lung.field(pts_x, pts_y)
    h = anatomy.heart
    c, s = math.cos(h.tilt), math.sin(h.tilt)
    dx, dy = x - h.cx, y - h.cy
    in_heart = ((c * dx - s * dy) / h.rx) ** 2 + ((s * dx + c * dy) / h.ry) ** 2 < 1.15
    return bool(f[0] > margin and np.all(f[1:] > 0.02) and not (avoid_heart and in_heart))


def _place_in_zone(rng, anatomy: Anatomy, side: str, zone: str, r: float, ry: float, taken) -> tuple[float, float]:
    """A centre in the zone band (with margin ry) whose disk of radius r fits in the lung, off the heart and
    clear of `taken` disks; constraints relax after 200 tries; last resort: the middle of the band."""
    lung = anatomy.lung(side)
    y0, y1 = lung.zone_band(zone)
    lo, hi = lung.x_range
    margin = min(ry, 0.45 * (y1 - y0)) + 0.006
    for attempt in range(400):
        strict = attempt < 200
        x, y = rng.uniform(lo, hi), rng.uniform(y0 + margin, y1 - margin)
        if _inside(anatomy, side, x, y, r if strict else 0.5 * r, 0.15 if strict else 0.05, strict) and (
            not strict or all(math.hypot(x - tx, y - ty) > r + tr + 0.015 for tx, ty, tr in taken)
        ):
            return float(x), float(y)
    return float(0.5 * (lung.lateral + lung.centre_x)), float(0.5 * (y0 + y1))


def sized(spec: FindingSpec, config: SyntheticConfig) -> FindingSpec:
    """Sets spec.size from spec.extent (positions untouched), so a prior can change only the size."""
    dmin = min_diameter(config)
    e = spec.extent
    size = {
        "Lung Lesion": lambda: lesion_diameter_mm(spec, config) / FOV_MM / 2,
        "Consolidation": lambda: max(0.045 + 0.04 * e, 0.6 * dmin),
        "Atelectasis": lambda: max(0.07 + 0.05 * e, 1.2 * dmin),
        "Pleural Effusion": lambda: 0.12 + 0.36 * e,  # fluid level: share of the lung height
        "Pneumothorax": lambda: 0.1 + 0.2 * e,  # collapse fraction
        "Fracture": lambda: max(0.045, 0.55 * dmin),  # radius of the fracture region
        "Pleural Other": lambda: 0.16 + 0.1 * e,  # share of the lung height covered by the cap
    }
    size["Pneumonia"] = size["Lung Opacity"] = size["Consolidation"]
    if spec.name not in size:
        return spec
    core = 0.5 * dmin / 0.93 if spec.name in ("Consolidation", "Pneumonia", "Lung Opacity") else 0.0
    return dataclasses.replace(spec, size=float(size[spec.name]()), core=core)


def place_findings(
    rng: np.random.Generator, specs: tuple[FindingSpec, ...], anatomy: Anatomy, config: SyntheticConfig
) -> tuple[FindingSpec, ...]:
    """Positions and sizes in the body frame, consistent with the planned side and zone."""
    taken: list[tuple[float, float, float]] = []
    out = []
    for s in specs:
        s = sized(s, config)
        if s.name == "Lung Lesion":
            x, y = _place_in_zone(rng, anatomy, s.side, s.zone, s.size, s.size, taken)
            taken.append((x, y, s.size))
            s = dataclasses.replace(s, x=x, y=y)
        elif s.name in ("Consolidation", "Pneumonia", "Lung Opacity"):
            core = airspace_core(s)
            x, y = _place_in_zone(rng, anatomy, s.side, s.zone, max(0.6 * s.size, core), max(0.3 * s.size, core), [])
            s = dataclasses.replace(s, x=x, y=y, angle=rng.uniform(-0.6, 0.6))
        elif s.name == "Atelectasis":
            angle = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 0.7))
            _, half_h = ellipse_extent(s.size, atelectasis_thickness(s.extent), angle)
            x, y = _place_in_zone(rng, anatomy, s.side, s.zone, s.size, half_h, [])
            s = dataclasses.replace(s, x=x, y=y, angle=angle)
        elif s.name == "Fracture":  # x: distance of the site from the midline; angle: index of the rib
            s = dataclasses.replace(s, x=rng.uniform(0.17, 0.27), angle=float(rng.integers(2, 7)))
        out.append(s)
    return tuple(out)


def atelectasis_thickness(extent: float) -> float:
    return 0.012 + 0.02 * extent


def airspace_core(spec: FindingSpec) -> float:
    """Radius of the disk every airspace opacity contains (visible part >= min_diameter across)."""
    return spec.core
