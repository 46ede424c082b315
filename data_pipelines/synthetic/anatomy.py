"""Patient anatomy in the body frame: lungs, heart, mediastinum, airway, spine, ribs, clavicles, diaphragm.

All lengths are body units (1.0 = the image width at magnification 1 = FOV_MM). Patient RIGHT is image LEFT:
the right lung has x < 0.5, the heart sits mostly at x > 0.5.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from data_pipelines.synthetic.geometry import ellipse_extent

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")


def side_sign(side: str) -> float:
    """-1 for the patient's right (image left), +1 for the patient's left (image right)."""
    if side not in SIDES:
        raise ValueError(f"data_pipelines/synthetic/anatomy.py: side must be one of {SIDES}, got {side!r}")
    return -1.0 if side == "right" else 1.0


@dataclasses.dataclass(frozen=True)
class Lung:
    """One lung field: medial/lateral edges (x), apex, dome peak and costophrenic angle (y)."""

    side: str
    medial: float
    lateral: float
    apex: float
    dome: float
    base: float

    @property
    def centre_x(self) -> float:
        return 0.5 * (self.medial + self.lateral)

    @property
    def half_width(self) -> float:
        return 0.5 * abs(self.lateral - self.medial)

    @property
    def x_range(self) -> tuple[float, float]:
        """Body x interval containing the whole field (the sheared apex reaches past the medial edge)."""
        return tuple(sorted((self.lateral, self.medial - side_sign(self.side) * 0.04)))  # type: ignore[return-value]

    @property
    def height(self) -> float:
        return self.base - self.apex

    def field(self, x, y):
        """Inside-ness: > 0 inside the lung field, about 1 at its core (float32 like x)."""
        sign = side_sign(self.side)
        yc = self.apex + 0.42 * self.height
        # Shear the upper part so that the apex sits medially, like a real lung apex.
        shear = np.float32(-sign * 0.25) * np.maximum(np.float32(yc) - y, 0.0)
        u = (x - np.float32(self.centre_x) - shear) / np.float32(self.half_width)
        upper = (y - np.float32(yc)) / np.float32(yc - self.apex)
        lower = (y - np.float32(yc)) / np.float32(self.base - yc)
        # upper part: an ellipse (rounded apex); lower part: near-vertical walls widening slightly to the base,
        # cut by the diaphragm dome (which makes the costophrenic angle)
        wall = u / (np.float32(1.0) + np.float32(0.06) * np.maximum(lower, 0.0))
        e = np.where(y < yc, u * u + upper * upper, wall * wall)
        return np.minimum(np.float32(1.0) - e, (self.dome_y(x) - y) * np.float32(40.0))

    def dome_y(self, x):
        """Diaphragm height under the lung: the dome peak medially-central, the CP angle at the lateral edge."""
        sign = side_sign(self.side)
        peak_x = self.centre_x - sign * 0.15 * self.half_width
        t = (x - np.float32(peak_x)) / np.float32(1.15 * self.half_width)
        return np.float32(self.dome) + np.float32(self.base + 0.01 - self.dome) * np.minimum(t * t, 1.0)

    def zone_of(self, y: float) -> str:
        """upper / middle / lower third of the lung height containing body y."""
        v = (y - self.apex) / self.height
        return ZONES[int(np.clip(math.floor(v * 3.0), 0, 2))]

    def zone_band(self, zone: str) -> tuple[float, float]:
        k = ZONES.index(zone)
        return self.apex + self.height * k / 3.0, self.apex + self.height * (k + 1) / 3.0


@dataclasses.dataclass(frozen=True)
class Heart:
    cx: float
    cy: float
    rx: float
    ry: float
    tilt: float

    def extent(self) -> tuple[float, float, float, float]:
        hx, hy = ellipse_extent(self.rx, self.ry, self.tilt)
        return self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy


@dataclasses.dataclass(frozen=True)
class Anatomy:
    right_lung: Lung
    left_lung: Lung
    ctr: float  # cardiothoracic ratio: heart width / internal thoracic width (as projected)
    heart_top: float
    heart_tilt: float
    heart_right_fraction: float  # share of the heart width right of the midline
    body_half_width: float
    soft_tissue: float
    mediastinum_half_width: float
    trachea_x: float
    carina_y: float
    hilum_y: float
    clavicle_y: float
    rib_phase: float  # y of the first posterior rib at the spine
    rib_spacing: float
    rib_curve: float
    bubble: tuple[float, float, float, float]  # gastric air bubble ellipse (cx, cy, rx, ry)

    @property
    def heart(self) -> Heart:
        return make_heart(
            self.ctr,
            self.thoracic_width,
            self.heart_top,
            self.left_lung.dome + 0.035,
            self.heart_tilt,
            self.heart_right_fraction,
        )

    def lung(self, side: str) -> Lung:
        side_sign(side)
        return self.right_lung if side == "right" else self.left_lung

    @property
    def thoracic_width(self) -> float:
        return self.left_lung.lateral - self.right_lung.lateral

    @property
    def mediastinum_top(self) -> float:
        return min(self.right_lung.apex, self.left_lung.apex) + 0.04

    @property
    def mediastinum_bottom(self) -> float:
        return self.heart.extent()[1] + 0.04


def make_heart(
    ctr: float, thoracic_width: float, top: float, bottom: float, tilt: float, right_fraction: float
) -> Heart:
    """A tilted ellipse spanning [top, bottom] whose projected width is ctr * thoracic width, `right_fraction`
    of it right of the midline (the heart apex points to the patient's left and down)."""
    hx, hy = 0.5 * ctr * thoracic_width, 0.5 * (bottom - top)
    while True:  # half extents (hx, hy) of a tilted ellipse -> its radii; flatten the tilt if impossible
        c2, s2 = math.cos(tilt) ** 2, math.sin(tilt) ** 2
        rx2, ry2 = (hx * hx * c2 - hy * hy * s2) / (c2 - s2), (hy * hy * c2 - hx * hx * s2) / (c2 - s2)
        if rx2 > 0 and ry2 > (0.5 * hy) ** 2:
            break
        tilt *= 0.7
    right_border = 0.5 - 2 * hx * right_fraction
    return Heart(cx=right_border + hx, cy=top + hy, rx=math.sqrt(rx2), ry=math.sqrt(ry2), tilt=tilt)


def sample_anatomy(rng: np.random.Generator, *, view: str, ctr: float, mediastinum_half_width: float) -> Anatomy:
    """One patient. `ctr` and the mediastinal width come from the findings (cardiomegaly, widened mediastinum)."""
    half_thorax = rng.uniform(0.33, 0.37)
    apex = rng.uniform(0.11, 0.14)
    dome_right = rng.uniform(0.66, 0.73) - (0.03 if view == "AP" else 0.0)  # AP: supine, shallower inspiration
    dome_left = dome_right + rng.uniform(0.015, 0.035)  # the right hemidiaphragm sits higher
    cp_depth = rng.uniform(0.05, 0.075)
    right = Lung(
        "right",
        medial=0.5 - rng.uniform(0.035, 0.05),
        lateral=0.5 - half_thorax,
        apex=apex + rng.uniform(-0.01, 0.01),
        dome=dome_right,
        base=dome_right + cp_depth,
    )
    left = Lung(
        "left",
        medial=0.5 + rng.uniform(0.045, 0.06),
        lateral=0.5 + half_thorax + rng.uniform(-0.01, 0.01),
        apex=apex + rng.uniform(-0.01, 0.01),
        dome=dome_left,
        base=dome_left + cp_depth,
    )
    hilum_y = rng.uniform(0.37, 0.42)
    n_ribs = rng.uniform(9.0, 10.5)  # posterior ribs above the dome: depth of inspiration
    return Anatomy(
        right_lung=right,
        left_lung=left,
        ctr=ctr,
        heart_top=hilum_y + rng.uniform(0.03, 0.06),
        heart_tilt=rng.uniform(0.3, 0.5),
        heart_right_fraction=rng.uniform(0.28, 0.36),
        body_half_width=half_thorax + rng.uniform(0.05, 0.10),
        soft_tissue=rng.uniform(0.85, 1.15),
        mediastinum_half_width=mediastinum_half_width,
        trachea_x=0.5 - rng.uniform(0.0, 0.01),
        carina_y=rng.uniform(0.29, 0.33),
        hilum_y=hilum_y,
        clavicle_y=rng.uniform(0.15, 0.18) - (0.03 if view == "AP" else 0.0),
        rib_phase=apex - rng.uniform(0.0, 0.03),
        rib_spacing=(dome_right - apex) / n_ribs,
        rib_curve=rng.uniform(0.9, 1.2),
        bubble=(
            0.5 + half_thorax * rng.uniform(0.3, 0.55),
            dome_left + rng.uniform(0.04, 0.06),
            rng.uniform(0.03, 0.05),
            rng.uniform(0.02, 0.03),
        ),
    )


def normal_ctr(rng: np.random.Generator, view: str) -> float:
    """A normal cardiothoracic ratio as projected (AP magnifies the heart about 1.15x, still below 0.52)."""
    return rng.uniform(0.38, 0.46) * (1.12 if view == "AP" else 1.0)


def normal_mediastinum(rng: np.random.Generator) -> float:
    return rng.uniform(0.04, 0.052)
