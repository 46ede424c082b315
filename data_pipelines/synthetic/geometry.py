"""Body frame <-> pixel frame, pixel windows, and the analytic shape profiles the renderer sums.

Body frame: x, y in [0, 1] across the image at zero pose (x right = patient LEFT, y down), midline x = 0.5.
Pixel frame: the rendered image; pixel (col, row) has its centre at ((col + 0.5) / W, (row + 0.5) / H) in
normalised image units. The pose (rotation about the image centre, shift, magnification) maps body -> image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Frame:
    """Pose of the body in the image: image = c + shift + scale * R(rotation) (body - c), c = (0.5, 0.5)."""

    size: int
    rotation: float = 0.0  # radians, counter-clockwise on screen
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates of every pixel centre: (X, Y), each float32 [H, W]."""
        u = (np.arange(self.size, dtype=np.float32) + 0.5) / self.size
        du = u - 0.5 - np.float32(self.shift_x)
        dv = u - 0.5 - np.float32(self.shift_y)
        c, s = math.cos(self.rotation) / self.scale, math.sin(self.rotation) / self.scale
        # inverse rotation: body = c + R(-theta) (img - c - shift) / scale; screen y is down, so R acts on (x, -y)
        x = 0.5 + np.float32(c) * du[None, :] - np.float32(s) * dv[:, None]
        y = 0.5 + np.float32(s) * du[None, :] + np.float32(c) * dv[:, None]
        return x.astype(np.float32), y.astype(np.float32)

    def to_pixel(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates -> continuous pixel coordinates (col, row) of the same point (pixel centres at k+0.5)."""
        x = np.asarray(x, dtype=np.float64) - 0.5
        y = np.asarray(y, dtype=np.float64) - 0.5
        c, s = math.cos(self.rotation) * self.scale, math.sin(self.rotation) * self.scale
        u = 0.5 + self.shift_x + c * x + s * y
        v = 0.5 + self.shift_y - s * x + c * y
        return u * self.size, v * self.size

    def to_body(self, col, row) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates -> body coordinates (inverse of to_pixel)."""
        du = np.asarray(col, dtype=np.float64) / self.size - 0.5 - self.shift_x
        dv = np.asarray(row, dtype=np.float64) / self.size - 0.5 - self.shift_y
        c, s = math.cos(self.rotation) / self.scale, math.sin(self.rotation) / self.scale
        return 0.5 + c * du - s * dv, 0.5 + s * du + c * dv

    def window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice] | None:
        """(rows, cols) slices covering the body-frame rectangle [x0, x1] x [y0, y1]; None if off-image."""
        cols, rows = self.to_pixel([x0, x1, x0, x1], [y0, y0, y1, y1])
        c0 = max(int(math.floor(cols.min())) - 1, 0)
        c1 = min(int(math.ceil(cols.max())) + 1, self.size)
        r0 = max(int(math.floor(rows.min())) - 1, 0)
        r1 = min(int(math.ceil(rows.max())) + 1, self.size)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight pixel-edge box (x_min, y_min, x_max, y_max) of a boolean mask: the mask lies in
    mask[y_min:y_max, x_min:x_max] and touches all four sides. None for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def ellipse_r2(x, y, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0):
    """Squared normalised radius of points in an ellipse rotated by `angle` (radians, screen CCW): < 1 inside."""
    dx, dy = x - np.float32(cx), y - np.float32(cy)
    if angle:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        dx, dy = c * dx - s * dy, s * dx + c * dy
    return (dx / np.float32(rx)) ** 2 + (dy / np.float32(ry)) ** 2


def ellipsoid_profile(r2):
    """Projected thickness of an ellipsoid (sphere profile sqrt(1 - r^2)), 0 outside."""
    return np.sqrt(np.maximum(np.float32(1.0) - r2, np.float32(0.0)))


def ellipse_extent(rx: float, ry: float, angle: float) -> tuple[float, float]:
    """Half extents (along x, along y) of an ellipse rotated by angle."""
    c, s = math.cos(angle), math.sin(angle)
    return math.sqrt((rx * c) ** 2 + (ry * s) ** 2), math.sqrt((rx * s) ** 2 + (ry * c) ** 2)


def segment_distance(x, y, ax: float, ay: float, bx: float, by: float):
    """Euclidean distance from points to the segment a-b (body units)."""
    vx, vy = bx - ax, by - ay
    length2 = max(vx * vx + vy * vy, 1e-12)
    t = np.clip(
        ((x - np.float32(ax)) * np.float32(vx) + (y - np.float32(ay)) * np.float32(vy)) / np.float32(length2), 0.0, 1.0
    )
    return np.hypot(x - np.float32(ax) - t * np.float32(vx), y - np.float32(ay) - t * np.float32(vy))


def smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
