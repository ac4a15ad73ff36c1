"""Kinetic maps and the functional tumour volume (FTV) of a DCE-MRI visit.

Percent enhancement PE = 100 (S - S0) / S0, signal enhancement ratio
SER = (S_early - S0) / (S_late - S0), and the I-SPY/ACRIN FTV rule: voxels with early PE at or
above 70 %, pre-contrast signal above a background threshold, in connected components at least
``min_component_ml`` large (the connectivity filter that removes isolated voxels).

In a bilateral field of view the heart and great vessels, posterior to the chest wall, enhance
strongly and outsize the tumour; there the FTV keeps only components that reach anterior of the
chest wall (``chest_wall_front``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PE_THRESHOLD = 70.0
BACKGROUND_FRACTION = 0.2  # of the 99th percentile of the pre-contrast signal
MIN_COMPONENT_ML = 0.1
CLEAVAGE_MM = 10.0  # how far both breasts must protrude anterior of the skin between them


@dataclass
class KineticMaps:
    pe_early: np.ndarray
    pe_late: np.ndarray
    ser: np.ndarray
    ftv_mask: np.ndarray
    ftv_ml: float
    chest_wall_found: bool = False  # bilateral field: FTV restricted to components anterior of it


def percent_enhancement(post: np.ndarray, pre: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """100 (post - pre) / pre where ``valid``; 0 elsewhere (where pre is near background)."""
    out = np.zeros(pre.shape, dtype=np.float32)
    np.divide(100.0 * (post - pre), pre, out=out, where=valid)
    return out


def signal_enhancement_ratio(pre: np.ndarray, early: np.ndarray, late: np.ndarray,
                             valid: np.ndarray) -> np.ndarray:
    """(early - pre) / (late - pre) where ``valid`` and the late enhancement is positive; else 0."""
    out = np.zeros(pre.shape, dtype=np.float32)
    np.divide(early - pre, late - pre, out=out, where=valid & (late - pre > 0))
    return out


def background_mask(pre: np.ndarray, fraction: float = BACKGROUND_FRACTION) -> np.ndarray:
    """Voxels whose pre-contrast signal exceeds ``fraction`` of the volume's 99th percentile."""
    return pre > fraction * np.percentile(pre, 99)


def ftv_mask(pe_early: np.ndarray, valid: np.ndarray, voxel_ml: float,
             pe_threshold: float = PE_THRESHOLD, min_component_ml: float = MIN_COMPONENT_ML,
             region: np.ndarray | None = None) -> np.ndarray:
    """I-SPY FTV rule with a 26-connected component-size filter; with ``region``, only the
    components that have a voxel in it."""
    candidate = (pe_early >= pe_threshold) & valid
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3, 3)))
    if n == 0:
        return candidate
    sizes = np.bincount(labels.ravel())
    keep = sizes * voxel_ml >= min_component_ml
    if region is not None:
        reaching = np.zeros(n + 1, bool)
        reaching[labels[candidate & region]] = True
        keep &= reaching
    keep[0] = False
    return keep[labels]


def _patient_axes(direction: np.ndarray) -> list[tuple[int, float]] | None:
    """(array axis, sign of its LPS direction) nearest to patient x (L-R), y (A-P) and z (S-I);
    None for a grid too oblique to tell them apart.

    ``direction`` columns are the LPS directions of increasing column, row and slice index, that is
    of array axes 2, 1 and 0."""
    nearest = np.argmax(np.abs(direction), axis=1)
    if len(set(nearest.tolist())) < 3:
        return None
    return [(2 - int(c), float(np.sign(direction[p, c]))) for p, c in enumerate(nearest)]


def chest_wall_front(body: np.ndarray, direction: np.ndarray, spacing: np.ndarray) -> np.ndarray | None:
    """Voxels anterior of the chest wall in a bilateral field of view; None where none is found.

    Rule, in patient coordinates (anterior is -y in LPS): in each transverse plane follow the
    anterior surface of ``body`` (pre-contrast foreground) across L-R. A bilateral field shows a
    cleavage: the most posterior surface point within the central half of the L-R extent, with
    a breast protruding at least ``CLEAVAGE_MM`` anterior of it on each side. The skin there covers
    the sternum, the most anterior point of the thorax; the heart and great vessels lie behind it.
    The surface is median-filtered (specks in the air are not skin); the chest wall depth is the
    median cleavage depth over such planes (robust to planes where the breasts touch), which must
    be at least a quarter of the planes through the body. A unilateral field has one protrusion
    and no cleavage: None. ``spacing`` is (column, row, slice) as in ``volume.Geometry``. The
    result is a read-only broadcast view of ``body``'s shape.
    """
    axes = _patient_axes(direction)
    if axes is None:
        return None
    (lr, _), (ap, ap_sign), (si, _) = axes
    b = np.moveaxis(body, (lr, ap, si), (0, 1, 2))
    if ap_sign < 0:
        b = b[:, ::-1]  # index increasing posteriorly
    ap_mm = float(spacing[2 - ap])
    air = b.shape[1] * ap_mm  # depth given to a column without body
    surface = np.where(b.any(axis=1), b.argmax(axis=1) * ap_mm, air)  # (L-R, S-I) depth of the skin
    surface = ndimage.median_filter(surface, size=(5, 3), mode="nearest")  # specks in the air are not skin
    n = surface.shape[0]
    walls, planes = [], 0
    for profile in surface.T:
        central = profile[n // 4: 3 * n // 4]
        if central.size == 0 or central.min() >= air:
            continue
        planes += 1
        c = n // 4 + int(np.argmax(central))
        if profile[c] < air and all(side.size and profile[c] - side.min() >= CLEAVAGE_MM
                                    for side in (profile[:c], profile[c + 1:])):
            walls.append(profile[c])
    if not walls or len(walls) < planes / 4:
        return None
    front = np.arange(body.shape[ap]) * ap_mm < np.median(walls)
    shape = [1, 1, 1]
    shape[ap] = -1
    return np.broadcast_to((front if ap_sign > 0 else front[::-1]).reshape(shape), body.shape)


def kinetic_maps(pre: np.ndarray, early: np.ndarray, late: np.ndarray, voxel_ml: float,
                 background_fraction: float = BACKGROUND_FRACTION, pe_threshold: float = PE_THRESHOLD,
                 min_component_ml: float = MIN_COMPONENT_ML, direction: np.ndarray | None = None,
                 spacing: np.ndarray | None = None) -> KineticMaps:
    """Kinetic maps and FTV; given the grid's ``direction`` and ``spacing`` (``volume.Geometry``),
    the FTV of a bilateral field keeps only components anterior of the chest wall."""
    pre, early, late = (np.asarray(a, dtype=np.float32) for a in (pre, early, late))
    valid = background_mask(pre, background_fraction)
    pe_early = percent_enhancement(early, pre, valid)
    front = None if direction is None else chest_wall_front(valid, direction, spacing)
    mask = ftv_mask(pe_early, valid, voxel_ml, pe_threshold, min_component_ml, front)
    return KineticMaps(pe_early, percent_enhancement(late, pre, valid),
                       signal_enhancement_ratio(pre, early, late, valid), mask,
                       float(mask.sum() * voxel_ml), front is not None)


def largest_component_centroid(mask: np.ndarray) -> np.ndarray | None:
    """Array-index centroid of the largest connected component, or None for an empty mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return np.array(ndimage.center_of_mass(labels == largest))
