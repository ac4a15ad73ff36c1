"""Kinetic maps and the functional tumour volume (FTV) of a DCE-MRI visit.

Percent enhancement PE = 100 (S - S0) / S0, signal enhancement ratio
SER = (S_early - S0) / (S_late - S0), and the I-SPY/ACRIN FTV rule: voxels with early PE at or
above 70 %, pre-contrast signal above a background threshold, in connected components at least
``min_component_ml`` large (the connectivity filter that removes isolated voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PE_THRESHOLD = 70.0
BACKGROUND_FRACTION = 0.2  # of the 99th percentile of the pre-contrast signal
MIN_COMPONENT_ML = 0.1


@dataclass
class KineticMaps:
    pe_early: np.ndarray
    pe_late: np.ndarray
    ser: np.ndarray
    ftv_mask: np.ndarray
    ftv_ml: float


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
             pe_threshold: float = PE_THRESHOLD, min_component_ml: float = MIN_COMPONENT_ML) -> np.ndarray:
    """I-SPY FTV rule with a 26-connected component-size filter."""
    candidate = (pe_early >= pe_threshold) & valid
    labels, n = ndimage.label(candidate, structure=np.ones((3, 3, 3)))
    if n == 0:
        return candidate
    sizes = np.bincount(labels.ravel())
    keep = sizes * voxel_ml >= min_component_ml
    keep[0] = False
    return keep[labels]


def kinetic_maps(pre: np.ndarray, early: np.ndarray, late: np.ndarray, voxel_ml: float,
                 background_fraction: float = BACKGROUND_FRACTION, pe_threshold: float = PE_THRESHOLD,
                 min_component_ml: float = MIN_COMPONENT_ML) -> KineticMaps:
    pre, early, late = (np.asarray(a, dtype=np.float32) for a in (pre, early, late))
    valid = background_mask(pre, background_fraction)
    pe_early = percent_enhancement(early, pre, valid)
    mask = ftv_mask(pe_early, valid, voxel_ml, pe_threshold, min_component_ml)
    return KineticMaps(pe_early, percent_enhancement(late, pre, valid),
                       signal_enhancement_ratio(pre, early, late, valid), mask,
                       float(mask.sum() * voxel_ml))


def largest_component_centroid(mask: np.ndarray) -> np.ndarray | None:
    """Array-index centroid of the largest connected component, or None for an empty mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return None
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return np.array(ndimage.center_of_mass(labels == largest))
