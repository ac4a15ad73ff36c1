"""Breast DCE-MRI phantom: renders one visit's dynamic series on a scanner's acquisition grid.

Coordinates are patient LPS millimetres with the origin at the chest wall; the breast extends
anteriorly (negative y). Tissues: air, fat (fat-suppressed, dark), fibroglandular tissue (slow
persistent enhancement), pectoral muscle and one tumour (fast wash-in, wash-out). Tissue
fractions are smooth at the voxel scale, which approximates partial-volume effects.

``Anatomy.sample(..., bilateral=True)`` adds a ``Chest``: a bilateral field of view (``CHEST_FOV_MM``)
in which the breast above sits on one side of the midline, a tumour-free breast on the other, and
the heart and great vessels (blood pool: strong, fast enhancement, far larger than any tumour) lie
posterior to the chest wall. Its coordinates have the origin at the midline of the chest wall.
Without it every render is exactly what it was before the option existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

FOV_MM = np.array([[-60.0, 60.0], [-72.0, 12.0], [-50.0, 50.0]])  # x, y, z extent covered by scans
TEXTURE_STEP_MM = 2.0
BASELINE_SIGNAL = {"fat": 90.0, "fgt": 300.0, "tumour": 260.0, "muscle": 200.0, "blood": 150.0}
CHEST_FOV_MM = np.array([[-170.0, 170.0], [-72.0, 140.0], [-50.0, 50.0]])  # bilateral field of view
CHEST_HALF_WIDTH_MM = 160.0  # body wall (muscle) extends this far either side of the midline


@dataclass
class Chest:
    """What a bilateral field of view adds: the other breast, the heart and the great vessels."""

    tumour_side: int  # +1: the tumour breast lies on the patient's left (+x), -1: right
    breast_offset_mm: float  # |x| of each breast's centre
    contralateral_axes: np.ndarray  # semi-axes (x, y, z) of the tumour-free breast, mm
    contralateral_texture: np.ndarray  # its smooth random field, on the same grid as Anatomy.texture
    heart_centre: np.ndarray  # mm, posterior to the chest wall
    heart_axes: np.ndarray  # semi-axes, mm
    aorta: tuple[float, float, float]  # descending aorta along z: centre x, centre y, radius (mm)
    mammary_vessels: tuple[float, float, float]  # internal mammary vessels at x = +-|x|, y, radius
    blood_enhancement: float  # peak relative enhancement of the blood pool

    @classmethod
    def sample(cls, breast_axes: np.ndarray, rng: np.random.Generator) -> "Chest":
        side = int(rng.choice((-1, 1)))
        offset = float(rng.uniform(80, 95))
        axes = breast_axes * rng.uniform(0.9, 1.1, size=3)
        grid = np.ceil((FOV_MM[:, 1] - FOV_MM[:, 0]) / TEXTURE_STEP_MM).astype(int) + 1
        texture = gaussian_filter(rng.standard_normal(grid), sigma=2.5)
        texture /= texture.std()
        heart_centre = np.array([rng.uniform(10, 30), rng.uniform(65, 80), rng.uniform(-15, 5)])
        heart_axes = np.array([rng.uniform(45, 55), rng.uniform(35, 42), rng.uniform(40, 48)])
        aorta = (float(rng.uniform(15, 30)), float(rng.uniform(118, 128)), float(rng.uniform(10, 13)))
        mammary = (float(rng.uniform(25, 35)), 16.0, float(rng.uniform(2.5, 3.5)))
        return cls(side, offset, axes, texture, heart_centre, heart_axes, aorta, mammary,
                   float(rng.uniform(3.5, 5.0)))


@dataclass
class Anatomy:
    """Per-patient anatomy and tumour biology, fixed across visits."""

    breast_axes: np.ndarray  # semi-axes (x, y, z) in mm
    tumour_centre: np.ndarray  # mm
    tumour_shape: np.ndarray  # relative semi-axes, product 1
    tumour_volume_ml: float  # at T0
    tumour_enhancement: float  # peak relative enhancement at T0
    washout: float  # fractional signal loss per 600 s after the peak
    fgt_enhancement: float  # background parenchymal enhancement amplitude
    texture: np.ndarray  # smooth random field on the FOV grid, values ~N(0, 1)
    chest: Chest | None = None  # bilateral field of view (None: one breast, coordinates of FOV_MM)

    @classmethod
    def sample(cls, y_t0: float, rng: np.random.Generator, bilateral: bool = False) -> "Anatomy":
        """A patient's anatomy; ``bilateral`` adds a ``Chest`` drawn after everything else, so the
        breast and tumour are those the same ``rng`` gives without it."""
        axes = np.array([rng.uniform(48, 58), rng.uniform(50, 64), rng.uniform(42, 50)])
        # tumour centre well inside the breast, away from the chest wall
        direction = rng.normal(size=3)
        direction[1] = -abs(direction[1]) - 0.5
        centre = direction / np.linalg.norm(direction) * rng.uniform(0.15, 0.45) * axes
        shape = rng.uniform(0.8, 1.25, size=3)
        shape /= np.prod(shape) ** (1 / 3)
        grid = np.ceil((FOV_MM[:, 1] - FOV_MM[:, 0]) / TEXTURE_STEP_MM).astype(int) + 1
        texture = gaussian_filter(rng.standard_normal(grid), sigma=2.5)
        texture /= texture.std()
        anatomy = cls(axes, centre, shape, float(np.clip(rng.lognormal(np.log(7.0), 0.6), 1.0, 30.0)),
                      float(np.exp(y_t0)), rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.6), texture)
        if bilateral:
            anatomy.chest = Chest.sample(axes, rng)
        return anatomy

    def tumour_breast_points(self, points: np.ndarray) -> np.ndarray:
        """``points`` in the coordinates of the tumour-bearing breast (FOV_MM's frame)."""
        if self.chest is None:
            return points
        return points - np.array([self.chest.tumour_side * self.chest.breast_offset_mm, 0.0, 0.0])


def _smooth_inside(signed_depth_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Fraction of a voxel inside a surface, from its signed depth (positive inside)."""
    return 1.0 / (1.0 + np.exp(-signed_depth_mm / edge_mm))


def tissue_fractions(anatomy: Anatomy, points: np.ndarray, volume_ratio: float,
                     voxel_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fractions of each tissue at physical ``points`` (..., 3) for one visit, and the texture there."""
    if anatomy.chest is not None:
        return _chest_fractions(anatomy, points, volume_ratio, voxel_mm)
    x, y, z = np.moveaxis(points, -1, 0)
    edge = 0.35 * voxel_mm
    ax, ay, az = anatomy.breast_axes
    radius = np.sqrt((x / ax) ** 2 + (np.minimum(y, 0) / ay) ** 2 + (z / az) ** 2)
    breast = _smooth_inside((1 - radius) * ay, edge) * _smooth_inside(-y, edge)
    muscle = _smooth_inside(y, edge) * _smooth_inside(10 - y, edge) * _smooth_inside(55 - np.abs(z), edge)
    index = (points - FOV_MM[:, 0]) / TEXTURE_STEP_MM
    texture = map_coordinates(anatomy.texture, np.moveaxis(index, -1, 0), order=1, mode="nearest")
    # fibroglandular tissue: the textured central part of the breast
    fgt = breast * _smooth_inside(20 * (texture - 0.2) + 25 * (0.75 - radius), 4.0)
    r_eq = (3 * anatomy.tumour_volume_ml * volume_ratio * 1000 / (4 * np.pi)) ** (1 / 3)
    rel = (points - anatomy.tumour_centre) / anatomy.tumour_shape
    dist = np.linalg.norm(rel, axis=-1) * (1 + 0.08 * texture)  # mildly irregular margin
    tumour = breast * _smooth_inside(r_eq - dist, edge)
    fgt = fgt * (1 - tumour)
    fractions = {"tumour": tumour, "fgt": fgt, "fat": breast - tumour - fgt, "muscle": muscle * (1 - breast)}
    return fractions, texture


def _breast(axes: np.ndarray, texture_field: np.ndarray, points: np.ndarray, edge: float):
    """Breast, fibroglandular fraction and texture of one breast at ``points`` in its own frame."""
    x, y, z = np.moveaxis(points, -1, 0)
    ax, ay, az = axes
    radius = np.sqrt((x / ax) ** 2 + (np.minimum(y, 0) / ay) ** 2 + (z / az) ** 2)
    breast = _smooth_inside((1 - radius) * ay, edge) * _smooth_inside(-y, edge)
    index = (points - FOV_MM[:, 0]) / TEXTURE_STEP_MM
    texture = map_coordinates(texture_field, np.moveaxis(index, -1, 0), order=1, mode="nearest")
    fgt = breast * _smooth_inside(20 * (texture - 0.2) + 25 * (0.75 - radius), 4.0)
    return breast, fgt, texture


def _chest_fractions(anatomy: Anatomy, points: np.ndarray, volume_ratio: float,
                     voxel_mm: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``tissue_fractions`` of a bilateral field: two breasts, chest wall, heart and vessels."""
    chest = anatomy.chest
    edge = 0.35 * voxel_mm
    x, y, z = np.moveaxis(points, -1, 0)
    local = anatomy.tumour_breast_points(points)
    breast, fgt, texture = _breast(anatomy.breast_axes, anatomy.texture, local, edge)
    other = (points + np.array([chest.tumour_side * chest.breast_offset_mm, 0.0, 0.0])) * np.array([-1.0, 1, 1])
    breast_2, fgt_2, texture_2 = _breast(chest.contralateral_axes, chest.contralateral_texture, other, edge)
    r_eq = (3 * anatomy.tumour_volume_ml * volume_ratio * 1000 / (4 * np.pi)) ** (1 / 3)
    rel = (local - anatomy.tumour_centre) / anatomy.tumour_shape
    dist = np.linalg.norm(rel, axis=-1) * (1 + 0.08 * texture)
    tumour = breast * _smooth_inside(r_eq - dist, edge)
    fgt = fgt * (1 - tumour)
    breasts = breast + breast_2
    wall = (_smooth_inside(y, edge) * _smooth_inside(10 - y, edge) * _smooth_inside(55 - np.abs(z), edge)
            * _smooth_inside(CHEST_HALF_WIDTH_MM - np.abs(x), edge))
    heart_radius = np.linalg.norm((points - chest.heart_centre) / chest.heart_axes, axis=-1)
    heart = _smooth_inside((1 - heart_radius) * chest.heart_axes.min(), edge)
    ax_, ay_, ar = chest.aorta
    aorta = _smooth_inside(ar - np.hypot(x - ax_, y - ay_), edge)
    mx, my, mr = chest.mammary_vessels
    mammary = _smooth_inside(mr - np.hypot(np.abs(x) - mx, y - my), edge)
    blood = np.clip(heart + aorta + mammary, 0, 1) * (1 - breasts)
    fractions = {"tumour": tumour, "fgt": fgt + fgt_2, "fat": breasts - tumour - fgt - fgt_2,
                 "muscle": wall * (1 - breasts) * (1 - blood), "blood": blood}
    # texture (enhancement heterogeneity) inside the breasts only: the blood pool is uniform
    return fractions, np.where(x * chest.tumour_side >= 0, texture, texture_2) * np.minimum(1, 2 * breasts)


def relative_enhancement(tissue: str, t: float, anatomy: Anatomy, tumour_enhancement: float) -> float:
    """Relative signal increase (S - S0) / S0 of a tissue ``t`` seconds after injection."""
    if t <= 0:
        return 0.0
    if tissue == "blood":  # first pass, then recirculation plateau (only in a bilateral field)
        peak = anatomy.chest.blood_enhancement if anatomy.chest is not None else 4.0
        return peak * (1 - np.exp(-t / 8.0)) * (0.6 * np.exp(-t / 90.0) + 0.4)
    if tissue == "tumour":
        return tumour_enhancement * (1 - np.exp(-t / 60.0)) * (1 - anatomy.washout * t / 600.0)
    amplitude, tau = {"fgt": (anatomy.fgt_enhancement, 500.0), "fat": (0.05, 300.0),
                      "muscle": (0.3, 200.0)}[tissue]
    return amplitude * (1 - np.exp(-t / tau))


def render_phases(anatomy: Anatomy, points: np.ndarray, voxel_mm: float, log_volume_ratio: float,
                  phase_times: list[float], gain: float, noise_sd: float,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Magnitude images of every phase at ``points`` for one visit.

    ``log_volume_ratio`` is the visit's tumour log-volume relative to T0; the tumour's enhancement
    falls with its volume (responders shrink and lose enhancement).
    """
    fractions, texture = tissue_fractions(anatomy, points, np.exp(log_volume_ratio), voxel_mm)
    tumour_enhancement = anatomy.tumour_enhancement * np.exp(0.5 * log_volume_ratio)
    heterogeneity = 1 + 0.12 * texture  # enhancement varies inside tumour and parenchyma
    phases = []
    for t in phase_times:
        signal = np.zeros(points.shape[:-1])
        for tissue, fraction in fractions.items():
            enhancement = relative_enhancement(tissue, t, anatomy, tumour_enhancement)
            signal += fraction * BASELINE_SIGNAL[tissue] * (1 + enhancement * heterogeneity)
        noisy = np.hypot(gain * signal + rng.normal(0, noise_sd, signal.shape),
                         rng.normal(0, noise_sd, signal.shape))  # Rician magnitude noise
        phases.append(noisy)
    return phases
