"""Physics-lite radiograph rendering: the image is a window of the summed line integrals (projected density)
of analytic shapes, shown MONOCHROME2 (dense = bright), with pose, exposure, noise and blur nuisances.

Density D = sum_i mu_i * t_i(x, y), with t_i the projected thickness profile of shape i in the body frame.
Lung air subtracts from the soft-tissue slab, the heart and mediastinum add back, bones add more; overlaps
therefore look like a radiograph (heart over lung, ribs over everything). Display = tone(window(1 - exp(-k D))).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from data_pipelines.synthetic.anatomy import Anatomy, Lung
from data_pipelines.synthetic.geometry import (
    Frame,
    ellipse_r2,
    ellipsoid_profile,
    segment_distance,
    smoothstep,
    tight_box,
)

LUNG_AIR = 0.62  # density removed by a full lung thickness (air replacing soft tissue)
BONE_RIB = 0.11
BONE_CLAVICLE = 0.38
HEART = 0.42
MEDIASTINUM = 0.32
METAL = 1.6


@dataclasses.dataclass(frozen=True)
class Nuisance:
    """Acquisition nuisances of one image."""

    view: str  # "PA" | "AP"
    rotation: float  # radians
    shift_x: float
    shift_y: float
    scale: float  # magnification of the body in the image
    exposure: float  # k in 1 - exp(-k D)
    gamma: float  # tone curve I + (gamma - 1) I (1 - I): > 1 brightens mid-tones
    window_low: float
    window_high: float
    noise: float  # std of the quantum-noise approximation at mid-grey
    blur: float  # 0..1 mix with a 3x3 binomial blur
    collimation: tuple[float, float, float, float]  # bright border widths (left, top, right, bottom), image fractions
    marker: str  # "R" (drawn at image left), "L" (image right) or ""

    def frame(self, size: int) -> Frame:
        return Frame(size=size, rotation=self.rotation, shift_x=self.shift_x, shift_y=self.shift_y, scale=self.scale)


def sample_nuisance(rng: np.random.Generator, view: str, difficulty: float) -> Nuisance:
    max_rot = math.radians(2.0 + 3.0 * difficulty)  # at most +-5 degrees
    collimate = rng.random() < 0.3
    return Nuisance(
        view=view,
        rotation=rng.uniform(-max_rot, max_rot),
        shift_x=rng.uniform(-0.02, 0.02),
        shift_y=rng.uniform(-0.02, 0.02),
        scale=rng.uniform(0.96, 1.04),
        exposure=rng.uniform(0.8, 1.4),
        gamma=rng.uniform(0.85, 1.2),
        window_low=rng.uniform(0.0, 0.06),
        window_high=rng.uniform(0.9, 1.0),
        noise=(0.008 + 0.03 * difficulty) * rng.uniform(0.6, 1.4) * (1.3 if view == "AP" else 1.0),
        blur=float(rng.uniform(0.2, 0.6) if rng.random() < 0.5 else 0.0),
        collimation=tuple(float(v) for v in (rng.uniform(0.0, 0.035, 4) * collimate)),  # type: ignore[arg-type]
        marker=str(rng.choice(["R", "L", ""], p=[0.4, 0.4, 0.2])),
    )


class Canvas:
    """Mutable render target of one image: body-frame grids, density, lung-thickness and vessel layers."""

    def __init__(self, frame: Frame):
        self.frame = frame
        self.size = frame.size
        self.x, self.y = frame.grid()  # [H, W] body coordinates of pixel centres
        self.density = np.zeros((self.size, self.size), np.float32)
        self.lung = np.zeros((self.size, self.size), np.float32)  # projected air thickness of the lungs, 0..1
        self.vessels = np.zeros((self.size, self.size), np.float32)  # lung markings, removed by a pneumothorax

    def win(self, x0: float, y0: float, x1: float, y1: float):
        return self.frame.window(x0, y0, x1, y1)

    def full_mask(self, win, local: np.ndarray) -> np.ndarray:
        mask = np.zeros((self.size, self.size), bool)
        mask[win] = local
        return mask


# --------------------------------------------------------------------------------------------- texture


@functools.lru_cache(maxsize=32)
def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """[size, grid] linear interpolation weights from a coarse grid to pixel centres (read-only)."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 2)
    frac = pos - lo
    m = np.zeros((size, grid), np.float32)
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    m.setflags(write=False)
    return m


def smooth_noise(rng: np.random.Generator, size: int | tuple[int, int], grid: int) -> np.ndarray:
    """Band-limited noise [h, w], about unit std: a grid x grid normal field, bilinearly upsampled."""
    h, w = (size, size) if isinstance(size, int) else size
    return _interp_matrix(h, grid) @ rng.standard_normal((grid, grid), dtype=np.float32) @ _interp_matrix(w, grid).T


# ------------------------------------------------------------------------------------------- anatomy


def _offset(box, win):
    """A box of a window -> a box of the image."""
    if box is None or win is None:
        return None
    r, c = win[0].start, win[1].start
    return box[0] + c, box[1] + r, box[2] + c, box[3] + r


def _lung_layer(canvas: Canvas, lung: Lung):
    """Fills canvas.lung with this lung's air thickness; returns its window."""
    lo, hi = lung.x_range
    win = canvas.win(lo - 0.01, lung.apex - 0.01, hi + 0.01, lung.base + 0.01)
    if win is None:
        return None
    f = lung.field(canvas.x[win], canvas.y[win])
    # air thickness: steep at the pleural margins, nearly flat inside
    canvas.lung[win] = np.maximum(canvas.lung[win], np.clip(f * np.float32(4.0), 0.0, 1.0) ** np.float32(0.6))
    return win


VESSEL_ATLASES = 8
_ATLAS_HILA = ((0.41, 0.40), (0.59, 0.385))  # canonical right / left hilum (body frame)


@functools.lru_cache(maxsize=64)
def _vessel_atlas(size: int, k: int) -> np.ndarray:
    """Lung markings around two canonical hila, [size + 2m, size + 2m] with margin m = size // 8 (read-only).

    Vessels are bright ridges of cos(n * angle) around each hilum; a smooth random warp of the angle bends
    them, and a second harmonic that fades in with distance doubles their number (branching). Computed once
    per (size, k) with a fixed seed; studies crop it at their own hilum position."""
    rng = np.random.default_rng(1000 + k)
    m = size // 8
    full = size + 2 * m
    coords = (np.arange(full, dtype=np.float32) - m + 0.5) / size
    x, y = coords[None, :], coords[:, None]
    warp = smooth_noise(rng, full, 9)
    out = np.zeros((full, full), np.float32)
    for sign, (hx, hy) in zip((-1.0, 1.0), _ATLAS_HILA):
        dx, dy = x - np.float32(hx), y - np.float32(hy)
        r = np.sqrt(dx * dx + dy * dy) + np.float32(1e-4)
        theta = np.arctan2(dy, dx * np.float32(sign)) + np.float32(0.35) * warp
        n = float(rng.integers(7, 10))
        phase = rng.uniform(0, 6.3)
        trunk = (np.float32(0.5) + np.float32(0.5) * np.cos(np.float32(n) * theta + phase)) ** 12
        branch = (np.float32(0.5) + np.float32(0.5) * np.cos(np.float32(2 * n) * theta + 2 * phase + 0.7)) ** 14
        grow = smoothstep((r - np.float32(0.06)) / np.float32(0.08))
        taper = np.exp(-r / np.float32(0.13)) * smoothstep((r - np.float32(0.02)) / np.float32(0.04))
        hilar = np.exp(-((r / np.float32(0.04)) ** 2))
        side = (x - np.float32(0.5)) * np.float32(sign) > 0  # each hilum feeds its own lung
        out += (np.float32(0.18) * (trunk + np.float32(0.7) * grow * branch) * taper + np.float32(0.18) * hilar) * side
    out.setflags(write=False)
    return out


def _vessel_layer(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator) -> None:
    """Lung markings: a random atlas cropped so that its hila sit at this patient's hila, kept inside the lungs."""
    size = canvas.size
    atlas = _vessel_atlas(size, int(rng.integers(VESSEL_ATLASES)))
    m = size // 8
    hx = 0.5 + rng.uniform(-0.01, 0.01)
    col, row = canvas.frame.to_pixel(hx, anatomy.hilum_y)
    dc = int(np.clip(round(0.5 * size - float(col)), -m, m))  # atlas hila midpoint is at (0.5, ~0.39)
    dr = int(np.clip(round(0.39 * size - float(row)), -m, m))
    canvas.vessels += atlas[m + dr : m + dr + size, m + dc : m + dc + size]
    canvas.vessels *= np.minimum(canvas.lung * np.float32(3.0), np.float32(1.0))


RIB_WIDTH = 0.55  # share of the rib period covered by a posterior rib


def rib_phase(dx, y, anatomy: Anatomy):
    """Posterior-rib coordinate: rib k occupies phase in [k, k + RIB_WIDTH). dx = |x - 0.5|.
    Ribs rise gently from the spine, then curve down at the lateral chest wall."""
    g = np.float32(anatomy.rib_curve) * (np.float32(-0.6) * dx + np.float32(2.4) * dx * dx)
    return (y - np.float32(anatomy.rib_phase) - g) / np.float32(anatomy.rib_spacing)


def rib_profile(phase):
    """Projected bone of a rib as a function of its phase: bright cortical margins, 0 between ribs."""
    t = (phase - np.floor(phase)) * np.float32(1.0 / RIB_WIDTH)
    band = np.maximum(np.float32(4.0) * t * (np.float32(1.0) - t), np.float32(0.0))  # parabolic bump on [0, 1)
    return np.sqrt(band) - np.float32(0.3) * band * band


def posterior_ribs(dx, y, anatomy: Anatomy):
    return rib_profile(rib_phase(dx, y, anatomy))


def _rib_layer(canvas: Canvas, anatomy: Anatomy) -> None:
    """Adds posterior (bright) and anterior (faint) rib arcs of both sides to the density."""
    top = min(anatomy.right_lung.apex, anatomy.left_lung.apex) - 0.03
    bottom = max(anatomy.right_lung.base, anatomy.left_lung.base) + 0.02
    half = anatomy.thoracic_width / 2 + 0.03
    win = canvas.win(0.5 - half, top, 0.5 + half, bottom)
    if win is None:
        return
    x, y = canvas.x[win], canvas.y[win]
    dx = np.abs(x - np.float32(0.5))
    cortex = posterior_ribs(dx, y, anatomy)
    fade = np.clip((np.float32(half) - dx) * np.float32(50.0), 0.0, 1.0)  # lateral chest wall
    fade *= np.clip((dx - np.float32(0.03)) * np.float32(50.0), 0.0, 1.0)  # spine
    fade *= np.clip((np.float32(bottom) - y) * np.float32(20.0), 0.0, 1.0)
    # anterior ribs: run down and medially from the lateral wall, fainter (costal cartilage invisible)
    phase2 = (y - np.float32(anatomy.rib_phase + 0.05) + np.float32(0.5) * dx) / np.float32(anatomy.rib_spacing * 1.25)
    t2 = (phase2 - np.floor(phase2)) * np.float32(1.0 / 0.35)
    band2 = np.maximum(np.float32(4.0) * t2 * (np.float32(1.0) - t2), np.float32(0.0))
    band2 *= np.clip((dx - np.float32(0.12)) * np.float32(12.0), 0.0, 1.0)
    canvas.density[win] += (np.float32(BONE_RIB) * cortex + np.float32(0.05) * band2) * fade


def heart_profile(x, y, anatomy: Anatomy):
    """Projected thickness of the cardiac silhouette: the tilted ventricular ellipse, a right-atrial bulge
    along the right heart border and the pulmonary trunk at the upper left border (union), cut at the
    diaphragm. It stays inside anatomy.heart.extent(), so the CTR is that of the main ellipse."""
    h = anatomy.heart
    x0, y0, x1, y1 = h.extent()
    ra_rx, ra_ry = 0.045, 0.075
    main = ellipsoid_profile(ellipse_r2(x, y, h.cx, h.cy, h.rx, h.ry, h.tilt))
    atrium = ellipsoid_profile(ellipse_r2(x, y, x0 + ra_rx, min(h.cy + 0.03, y1 - ra_ry), ra_rx, ra_ry))
    trunk = ellipsoid_profile(ellipse_r2(x, y, 0.5 + 0.055, y0 + 0.03, 0.035, 0.03))
    prof = np.maximum(np.maximum(main, np.float32(0.9) * atrium), np.float32(0.8) * trunk)
    return prof * smoothstep((np.float32(anatomy.left_lung.dome + 0.01) - y) / 0.02)


def render_anatomy(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator) -> dict:
    """Adds the normal chest to canvas.density and fills canvas.lung / canvas.vessels.

    Returns tight pixel boxes of the normal structures: {"right lung", "left lung", "heart"}."""
    boxes = {}
    x, y, d = canvas.x, canvas.y, canvas.density
    soft = np.float32(anatomy.soft_tissue)
    # soft-tissue slab: an elliptic cylinder, narrower at the neck
    neck = np.float32(0.11)
    half_width = neck + (np.float32(anatomy.body_half_width) - neck) * smoothstep((y - np.float32(0.0)) / 0.14)
    d += soft * np.sqrt(np.clip(1.0 - ((x - np.float32(0.5)) / half_width) ** 2, 0.0, 1.0))
    # lungs (air) and their markings
    for lung in (anatomy.right_lung, anatomy.left_lung):
        win = _lung_layer(canvas, lung)
        boxes[f"{lung.side} lung"] = _offset(tight_box(canvas.lung[win] > 0), win)
    # heart: adds density and displaces the lung in front of and behind it
    win = canvas.win(*anatomy.heart.extent())
    if win is not None:
        heart = heart_profile(x[win], y[win], anatomy)
        boxes["heart"] = _offset(tight_box(heart > 0), win)
        d[win] += np.float32(HEART) * heart
        canvas.lung[win] *= np.float32(1.0) - np.float32(0.45) * np.minimum(heart * 2.0, 1.0)
    _vessel_layer(canvas, anatomy, rng)
    # overlying soft tissue (breasts, diaphragm slope) makes the lower zones greyer
    base = np.float32(0.5 * (anatomy.right_lung.base + anatomy.left_lung.base))
    lower = smoothstep((y - np.float32(anatomy.hilum_y)) / (base - np.float32(anatomy.hilum_y)))
    d -= np.float32(LUNG_AIR) * soft * canvas.lung * (np.float32(1.0) - np.float32(0.22) * lower)
    d += canvas.lung * np.float32(0.035) * smooth_noise(rng, canvas.size, 12)  # parenchymal texture
    # mediastinum (upper, above the heart) incl. the aortic knob
    mw, top, bottom = anatomy.mediastinum_half_width, 0.0, anatomy.mediastinum_bottom
    win = canvas.win(0.5 - 1.1 * mw, top, 0.5 + 1.1 * mw, bottom)
    if win is not None:
        xs, ys = x[win], y[win]
        widen = np.float32(0.75) + np.float32(0.35) * smoothstep((ys - np.float32(anatomy.carina_y)) / 0.15)
        band = np.sqrt(np.clip(1.0 - ((xs - np.float32(0.5)) / (np.float32(mw) * widen)) ** 2, 0.0, 1.0))
        band *= smoothstep((np.float32(bottom) - ys) / np.float32(0.06))
        d[win] += np.float32(MEDIASTINUM) * band
    kx, ky, kr = 0.5 + mw * 0.85 + 0.012, anatomy.carina_y - 0.035, 0.028
    win = canvas.win(kx - kr, ky - kr, kx + kr, ky + kr)
    if win is not None:
        d[win] += np.float32(0.35) * ellipsoid_profile(ellipse_r2(x[win], y[win], kx, ky, kr, kr))
    # spine with vertebral bodies
    sw = 0.045
    win = canvas.win(0.5 - sw, 0.0, 0.5 + sw, 1.0)
    if win is not None:
        xs, ys = x[win], y[win]
        body = np.sqrt(np.clip(1.0 - ((xs - np.float32(0.5)) / np.float32(sw)) ** 2, 0.0, 1.0))
        vert = np.float32(0.7) + np.float32(0.3) * np.cos(
            np.float32(2 * math.pi / anatomy.rib_spacing) * (ys - np.float32(anatomy.rib_phase))
        )
        d[win] += np.float32(0.14) * body * vert
    # trachea and main bronchi (air)
    tx, cy = anatomy.trachea_x, anatomy.carina_y
    win = canvas.win(tx - 0.02, 0.0, tx + 0.02, cy)
    if win is not None:
        dist = np.abs(x[win] - np.float32(tx))
        d[win] -= np.float32(0.18) * np.sqrt(np.clip(1.0 - (dist / np.float32(0.017)) ** 2, 0.0, 1.0))
    win = canvas.win(tx - 0.09, cy - 0.01, tx + 0.09, cy + 0.08)
    if win is not None:
        xs, ys = x[win], y[win]
        dist = np.minimum(
            segment_distance(xs, ys, tx, cy, tx - 0.075, cy + 0.06),
            segment_distance(xs, ys, tx, cy, tx + 0.07, cy + 0.075),
        )
        d[win] -= np.float32(0.18) * np.sqrt(np.clip(1.0 - (dist / np.float32(0.017)) ** 2, 0.0, 1.0))
    # ribs and clavicles
    _rib_layer(canvas, anatomy)
    for sign in (-1.0, 1.0):
        cyv = anatomy.clavicle_y
        pts = [(0.5 + sign * 0.035, cyv + 0.012), (0.5 + sign * 0.15, cyv - 0.012), (0.5 + sign * 0.3, cyv - 0.04)]
        win = canvas.win(min(pts[0][0], pts[2][0]) - 0.02, cyv - 0.07, max(pts[0][0], pts[2][0]) + 0.02, cyv + 0.04)
        if win is None:
            continue
        xs, ys = x[win], y[win]
        dist = np.minimum(segment_distance(xs, ys, *pts[0], *pts[1]), segment_distance(xs, ys, *pts[1], *pts[2]))
        d[win] += np.float32(BONE_CLAVICLE) * np.sqrt(np.clip(1.0 - (dist / np.float32(0.014)) ** 2, 0.0, 1.0))
        hx, hy, hr = 0.5 + sign * (anatomy.thoracic_width / 2 + 0.075), cyv + 0.02, 0.055
        win = canvas.win(hx - hr, hy - hr, hx + hr, hy + hr)
        if win is not None:
            d[win] += np.float32(0.3) * ellipsoid_profile(ellipse_r2(x[win], y[win], hx, hy, hr, hr))
    # gastric bubble under the left hemidiaphragm
    bx, by, brx, bry = anatomy.bubble
    win = canvas.win(bx - brx, by - bry, bx + brx, by + bry)
    if win is not None:
        d[win] -= np.float32(0.3) * ellipsoid_profile(ellipse_r2(x[win], y[win], bx, by, brx, bry))
    return boxes


# ------------------------------------------------------------------------------------------- display


_GLYPHS = {
    "R": ("11110", "10001", "10001", "11110", "10100", "10010", "10001"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
}


def _burn_marker(image: np.ndarray, letter: str) -> None:
    """A bright 5x7 letter near the top corner of the side it names (R at image left = patient right)."""
    size = image.shape[0]
    cell = max(1, size // 96)
    glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    glyph = np.kron(glyph, np.ones((cell, cell), bool))
    gh, gw = glyph.shape
    top = max(2, size // 40)
    left = top if letter == "R" else size - top - gw
    image[top : top + gh, left : left + gw][glyph] = 1.0


@functools.lru_cache(maxsize=8)
def _noise_atlas(size: int) -> np.ndarray:
    """[2 size, 2 size] standard normal field with a fixed seed (read-only); studies crop it at random."""
    atlas = np.random.default_rng(size).standard_normal((2 * size, 2 * size), dtype=np.float32)
    atlas.setflags(write=False)
    return atlas


def _white_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit white noise [size, size]: a random crop of the atlas, randomly flipped and signed (cheaper than
    drawing size^2 normals per image)."""
    r, c = rng.integers(0, size, 2)
    crop = _noise_atlas(size)[r : r + size, c : c + size]
    flip_r, flip_c, negate = rng.integers(0, 2, 3)
    crop = crop[:: -1 if flip_r else 1, :: -1 if flip_c else 1]
    return -crop if negate else crop


def to_display(canvas: Canvas, nuisance: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Projected density -> MONOCHROME2 float32 [H, W] in [0, 1] with exposure, window, tone, blur, noise."""
    k = np.float32(nuisance.exposure)
    ref = np.float32(1.0) - np.exp(-k * np.float32(2.0))
    density = canvas.density + canvas.vessels
    img = (np.float32(1.0) - np.exp(-k * np.maximum(density, 0.0))) / ref
    img = (img - np.float32(nuisance.window_low)) / np.float32(nuisance.window_high - nuisance.window_low)
    img = np.clip(img, 0.0, 1.0)
    img = img + np.float32(nuisance.gamma - 1.0) * img * (np.float32(1.0) - img)  # gamma-like tone curve
    if nuisance.blur > 0:  # 3x3 binomial blur, edges replicated
        p = np.pad(img, 1, mode="edge")
        b = (p[:-2] + 2 * p[1:-1] + p[2:]) * np.float32(0.25)
        b = (b[:, :-2] + 2 * b[:, 1:-1] + b[:, 2:]) * np.float32(0.25)
        img = img + np.float32(nuisance.blur) * (b - img)
    # quantum noise: fewer photons reach the detector behind dense tissue -> more noise in bright regions
    sigma = np.float32(nuisance.noise) * (np.float32(0.5) + img)
    img = img + sigma * _white_noise(rng, canvas.size)
    size = canvas.size
    left, top, right, bottom = (int(round(f * size)) for f in nuisance.collimation)
    if left:
        img[:, :left] = 0.9
    if right:
        img[:, size - right :] = 0.9
    if top:
        img[:top] = 0.9
    if bottom:
        img[size - bottom :] = 0.9
    if nuisance.marker:
        _burn_marker(img, nuisance.marker)
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)
