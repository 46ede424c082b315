"""Rendering of each finding into a Canvas, returning the finding's exact boolean mask [H, W].

Every lesion adds (or removes) density only where its mask is true, so the tight box of the mask is the
tight box of what was drawn. Texture comes from a per-lesion generator seeded by spec.texture, so the
same lesion looks the same in a prior and a current study.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.synthetic.anatomy import Anatomy, side_sign
from data_pipelines.synthetic.findings import FindingSpec, airspace_core, atelectasis_thickness
from data_pipelines.synthetic.geometry import ellipse_r2, ellipsoid_profile, segment_distance, smoothstep
from data_pipelines.synthetic.render import (
    BONE_RIB,
    LUNG_AIR,
    METAL,
    RIB_WIDTH,
    Canvas,
    heart_profile,
    rib_phase,
    rib_profile,
    smooth_noise,
)

f32 = np.float32


def render_finding(canvas: Canvas, spec: FindingSpec, anatomy: Anatomy, contrast: float) -> np.ndarray:
    """Draws one finding; returns its mask. contrast scales lesion density (difficulty knob)."""
    rng = np.random.default_rng(spec.texture)
    c = contrast * rng.uniform(0.85, 1.15)
    fn = _RENDERERS[spec.name]
    return fn(canvas, spec, anatomy, rng, c)


def _empty(canvas: Canvas) -> np.ndarray:
    return np.zeros((canvas.size, canvas.size), bool)


def _nodule(canvas, s: FindingSpec, anatomy, rng, c):
    win = canvas.win(s.x - s.size, s.y - s.size, s.x + s.size, s.y + s.size)
    if win is None:
        return _empty(canvas)
    r2 = ellipse_r2(canvas.x[win], canvas.y[win], s.x, s.y, s.size, s.size)
    inside = r2 < 1.0
    amp = 0.32 if s.kind == "nodule" else 0.4
    canvas.density[win] += f32(c * amp) * ellipsoid_profile(r2) ** f32(0.7) * inside
    return canvas.full_mask(win, inside)


def _airspace(canvas, s: FindingSpec, anatomy, rng, c):
    """Consolidation (dense, air bronchograms), pneumonia (patchy), lung opacity (faint ground glass)."""
    lung = anatomy.lung(s.side)
    band0, band1 = lung.zone_band(s.zone)
    r = s.size
    win = canvas.win(s.x - 1.7 * r, max(s.y - 1.3 * r, band0), s.x + 1.7 * r, min(s.y + 1.3 * r, band1))
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    n = {"Consolidation": 3, "Pneumonia": 5, "Lung Opacity": 4}[s.name]
    field = np.zeros(x.shape, np.float32)
    for _ in range(n):
        cx = s.x + rng.normal(0, 0.35 * r)
        cy = s.y + rng.normal(0, 0.2 * r)
        r2 = ellipse_r2(x, y, cx, cy, r * rng.uniform(0.45, 0.8), r * rng.uniform(0.35, 0.6), s.angle)
        field = np.maximum(field, 1.0 - r2)
    tex = smooth_noise(rng, x.shape, 6)
    if s.name == "Pneumonia":
        field = field * (f32(0.75) + f32(0.35) * tex)
    # a core disk (placed inside the lung and zone) keeps the box at least min_diameter on each side
    field = np.maximum(field, 1.0 - ellipse_r2(x, y, s.x, s.y, airspace_core(s), airspace_core(s)))
    inside = (lung.field(x, y) > 0) & (y >= f32(band0)) & (y < f32(band1))
    v = np.clip((field - f32(0.12)) / f32(0.88), 0.0, 1.0) * inside
    mask = v > 0
    if s.name == "Lung Opacity":
        canvas.density[win] += f32(c * 0.27) * v ** f32(0.7) * (f32(0.85) + f32(0.15) * tex)
    else:
        amp = 0.42 if s.name == "Consolidation" else 0.36
        canvas.density[win] += f32(c * amp) * np.sqrt(v) * (f32(0.9) + f32(0.1) * tex)
        canvas.vessels[win] *= f32(1.0) - f32(0.8) * np.minimum(v * 3, 1.0)  # silhouetting of the markings
    if s.name == "Consolidation" and s.extent > 1 / 3:  # air bronchograms: dark tubes inside the opacity
        sign = side_sign(s.side)
        for dy in (-0.25 * r, 0.2 * r):
            dist = segment_distance(x, y, s.x - sign * 0.7 * r, s.y, s.x + sign * 0.5 * r, s.y + dy)
            canvas.density[win] -= f32(c * 0.2) * np.clip(1.0 - dist / f32(0.007), 0.0, 1.0) * (v > 0.35)
    return canvas.full_mask(win, mask)


def _atelectasis(canvas, s: FindingSpec, anatomy, rng, c):
    lung = anatomy.lung(s.side)
    band0, band1 = lung.zone_band(s.zone)
    win = canvas.win(s.x - s.size, max(s.y - s.size, band0), s.x + s.size, min(s.y + s.size, band1))
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    r2 = ellipse_r2(x, y, s.x, s.y, s.size, atelectasis_thickness(s.extent), s.angle)
    inside = (r2 < 1.0) & (lung.field(x, y) > 0) & (y >= f32(band0)) & (y < f32(band1))
    canvas.density[win] += f32(c * 0.42) * ellipsoid_profile(r2) ** f32(0.5) * inside
    return canvas.full_mask(win, inside)


def _effusion(canvas, s: FindingSpec, anatomy, rng, c):
    """Basal fluid with a meniscus rising laterally; fills the costophrenic angle and effaces the dome."""
    lung = anatomy.lung(s.side)
    level = lung.base - s.size * lung.height
    rise = 0.08 * lung.height
    lo, hi = lung.x_range
    win = canvas.win(lo - 0.01, level - rise - 0.01, hi + 0.01, lung.base + 0.01)
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    u = np.clip((x - f32(lung.medial)) / f32(lung.lateral - lung.medial), 0.0, 1.0)
    meniscus = f32(level) - f32(rise) * u * u
    mask = (lung.field(x, y) > 0) & (y > meniscus)
    ramp = np.clip((y - meniscus) / f32(0.035), 0.0, 1.0) * mask
    fill = f32(min(1.0, 0.55 + 0.45 * c)) * ramp
    canvas.density[win] += f32(LUNG_AIR * anatomy.soft_tissue) * canvas.lung[win] * fill
    canvas.density[win] += f32(0.06) * ramp
    canvas.vessels[win] *= f32(1.0) - fill
    return canvas.full_mask(win, mask)


def _pneumothorax(canvas, s: FindingSpec, anatomy, rng, c):
    """Pleural air between the chest wall and a collapsed lung (shrunk towards its medial base), no markings
    in it, and a thin visceral pleural line at the collapsed lung's edge."""
    lung = anatomy.lung(s.side)
    lo, hi = lung.x_range
    win = canvas.win(lo - 0.01, lung.apex - 0.01, hi + 0.01, lung.base + 0.01)
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    ax, ay = lung.medial, lung.base
    xs = f32(ax) + (x - f32(ax)) / f32(1.0 - s.size)
    ys = f32(ay) + (y - f32(ay)) / f32(1.0 - 0.8 * s.size)
    field = lung.field(x, y)
    collapsed = lung.field(xs, ys)
    air = (field > 0) & (collapsed <= 0)
    canvas.density[win] -= f32(0.14 * c * anatomy.soft_tissue) * air * np.minimum(canvas.lung[win] * 2, 1.0)
    canvas.vessels[win] *= ~air
    line = np.clip(1.0 - np.abs(collapsed) / f32(0.06), 0.0, 1.0) * (field > 0.05) * ~air
    canvas.density[win] += f32(0.1 * c) * line
    return canvas.full_mask(win, air | (line > 0))  # the visceral pleural line belongs to the finding


def _edema(canvas, s: FindingSpec, anatomy, rng, c):
    """Bilateral perihilar (bat-wing) haze with indistinct vessels."""
    mask = _empty(canvas)
    for lung in (anatomy.right_lung, anatomy.left_lung):
        sign = side_sign(lung.side)
        cx, cy = 0.5 + sign * (0.12 + 0.02 * s.extent), anatomy.hilum_y + 0.04
        rx, ry = 0.08 + 0.05 * s.extent, 0.11 + 0.06 * s.extent
        win = canvas.win(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            continue
        x, y = canvas.x[win], canvas.y[win]
        field = 1.0 - ellipse_r2(x, y, cx, cy, rx, ry)
        tex = smooth_noise(rng, x.shape, 8)
        v = np.clip((field - f32(0.1)) / f32(0.9), 0.0, 1.0) * (lung.field(x, y) > 0)
        canvas.density[win] += f32(c * (0.18 + 0.12 * s.extent)) * v * (f32(0.8) + f32(0.25) * tex)
        canvas.vessels[win] *= f32(1.0) - f32(0.5) * v
        mask[win] |= v > 0
    return mask


def _cardiomegaly(canvas, s: FindingSpec, anatomy, rng, c):
    win = canvas.win(*anatomy.heart.extent())
    if win is None:
        return _empty(canvas)
    return canvas.full_mask(win, heart_profile(canvas.x[win], canvas.y[win], anatomy) > 0)


def _mediastinum(canvas, s: FindingSpec, anatomy, rng, c):
    """The widened upper mediastinum between the lung apices and the top of the heart."""
    mw, top, bottom = anatomy.mediastinum_half_width, anatomy.mediastinum_top, anatomy.heart.extent()[1]
    win = canvas.win(0.5 - 1.1 * mw, top, 0.5 + 1.1 * mw, bottom)
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    widen = f32(0.75) + f32(0.35) * smoothstep((y - f32(anatomy.carina_y)) / 0.15)
    inside = (np.abs(x - f32(0.5)) < f32(mw) * widen) & (y >= f32(top)) & (y < f32(bottom))
    return canvas.full_mask(win, inside)


def _fracture(canvas, s: FindingSpec, anatomy, rng, c):
    """A posterior rib with a gap and a step-off of its lateral fragment, inside a disk around the site."""
    sign = side_sign(s.side)
    dxf, k = s.x, int(s.angle)
    g = anatomy.rib_curve * (-0.6 * dxf + 2.4 * dxf * dxf)
    xf = 0.5 + sign * dxf
    yf = anatomy.rib_phase + g + (k + RIB_WIDTH / 2) * anatomy.rib_spacing
    rho = s.size
    win = canvas.win(xf - rho, yf - rho, xf + rho, yf + rho)
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    dx = np.abs(x - f32(0.5))
    phase = rib_phase(dx, y, anatomy)
    step = f32(0.3 + 0.25 * s.extent) * (dx > f32(dxf))
    broken = rib_profile(phase + step) * (np.abs(dx - f32(dxf)) > f32(0.006 + 0.006 * s.extent))
    r = np.hypot(x - f32(xf), y - f32(yf))
    inside = r < f32(rho)
    fade = smoothstep((f32(rho) - r) / f32(0.35 * rho))
    # displaced fragments with sclerotic (brighter) margins replace the intact rib inside the disk
    canvas.density[win] += f32(BONE_RIB) * (f32(1.0 + c) * broken - rib_profile(phase)) * fade * inside
    return canvas.full_mask(win, inside)


def _device_path(s: FindingSpec, anatomy: Anatomy) -> list[tuple[float, float]]:
    sign = side_sign(s.side) if s.side else 0.0
    h = anatomy.heart
    cl, ca = anatomy.clavicle_y, anatomy.carina_y
    if s.kind == "pacemaker":
        return [
            (0.5 + sign * 0.21, cl + 0.05),
            (0.5 + sign * 0.1, cl + 0.03),
            (0.49, ca + 0.02),
            (0.485, h.cy - 0.03),
            (h.cx + 0.35 * h.rx, h.cy + 0.6 * h.ry),
        ]
    if s.kind == "venous catheter":
        return [
            (0.5 + sign * 0.27, cl - 0.02),
            (0.5 + sign * 0.09, cl + 0.025),
            (0.48, ca - 0.02),
            (0.475, ca + 0.07 + 0.03 * s.extent),
        ]
    bx, by, _, _ = anatomy.bubble  # enteric tube: from the neck (below any collimation) down the oesophagus
    return [
        (anatomy.trachea_x + 0.008, 0.07),
        (0.5 + 0.006, ca),
        (0.5 + 0.015, anatomy.left_lung.dome),
        (bx - 0.02, by + 0.01),
        (bx + 0.03, by + 0.05),
    ]


def _device(canvas, s: FindingSpec, anatomy, rng, c):
    """Radiopaque tube / catheter / pacemaker lead (+ generator), drawn with metal density."""
    mask = _empty(canvas)
    path = _device_path(s, anatomy)
    radius = 0.008 if s.kind == "enteric tube" else 0.006
    for (ax, ay), (bx, by) in zip(path[:-1], path[1:]):
        win = canvas.win(min(ax, bx) - radius, min(ay, by) - radius, max(ax, bx) + radius, max(ay, by) + radius)
        if win is None:
            continue
        dist = segment_distance(canvas.x[win], canvas.y[win], ax, ay, bx, by)
        prof = np.clip(1.0 - dist / f32(radius), 0.0, 1.0)
        canvas.density[win] += f32(METAL * 0.35) * prof * ~mask[win]  # joints drawn once
        mask[win] |= prof > 0
    if s.kind == "pacemaker":
        gx, gy = path[0]
        a, b = 0.035, 0.024
        win = canvas.win(gx - a, gy - b, gx + a, gy + b)
        if win is not None:
            x, y = canvas.x[win], canvas.y[win]
            box = ((x - f32(gx)) / f32(a)) ** 4 + ((y - f32(gy)) / f32(b)) ** 4
            inside = box < 1.0
            canvas.density[win] += f32(METAL) * inside * ~mask[win]
            mask[win] |= inside
    return mask


def _pleural_thickening(canvas, s: FindingSpec, anatomy, rng, c):
    """Apical pleural cap: a rim of soft tissue along the lung apex."""
    lung = anatomy.lung(s.side)
    lo, hi = lung.x_range
    bottom = lung.apex + s.size * lung.height
    win = canvas.win(lo - 0.01, lung.apex - 0.01, hi + 0.01, bottom)
    if win is None:
        return _empty(canvas)
    x, y = canvas.x[win], canvas.y[win]
    field = lung.field(x, y)
    rim = (field > 0) & (field < f32(0.2 + 0.1 * s.extent)) & (y < f32(bottom))
    canvas.density[win] += f32(c * 0.45) * rim * smoothstep((f32(bottom) - y) / f32(0.04))
    return canvas.full_mask(win, rim)


_RENDERERS = {
    "Lung Lesion": _nodule,
    "Consolidation": _airspace,
    "Pneumonia": _airspace,
    "Lung Opacity": _airspace,
    "Atelectasis": _atelectasis,
    "Pleural Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
    "Edema": _edema,
    "Cardiomegaly": _cardiomegaly,
    "Enlarged Cardiomediastinum": _mediastinum,
    "Fracture": _fracture,
    "Support Devices": _device,
    "Pleural Other": _pleural_thickening,
}
