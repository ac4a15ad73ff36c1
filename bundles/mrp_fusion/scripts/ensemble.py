"""The MRP ensemble: y = w * p_MG + (1 - w) * p_MR, with w chosen on the validation patients.

Pure functions on numpy arrays (the bundle depends on no scikit-learn). A modality a patient
lacks is NaN; such a patient gets the other model's probability.
"""

from __future__ import annotations

import numpy as np


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties counted half."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D of one length, got {y_true.shape} and {y_score.shape}")
    positive = y_true == 1
    if not np.isin(y_true, (0, 1)).all() or positive.all() or not positive.any():
        raise ValueError("y_true must hold both classes, coded 0 and 1")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score has a missing or infinite value")
    _, inverse, counts = np.unique(y_score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of each tie group, from 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mrp_probability(p_mg, p_mr, weight: float) -> np.ndarray:
    """The MRP probability per patient; a patient with one modality gets that model's."""
    p_mg, p_mr = np.asarray(p_mg, dtype=np.float64), np.asarray(p_mr, dtype=np.float64)
    if p_mg.shape != p_mr.shape:
        raise ValueError(f"p_mg and p_mr differ in shape: {p_mg.shape} and {p_mr.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be within [0, 1], got {weight}")
    if (np.isnan(p_mg) & np.isnan(p_mr)).any():
        raise ValueError("a patient has neither a mammography nor an MRI probability")
    fused = weight * p_mg + (1.0 - weight) * p_mr
    return np.where(np.isnan(p_mg), p_mr, np.where(np.isnan(p_mr), p_mg, fused))


def ensemble_weight(y_true, p_mg, p_mr, steps: int = 101) -> float:
    """The mammography weight w on a grid of ``steps`` values in [0, 1] that maximises the AUROC
    of ``mrp_probability`` on the validation patients (all of them, single-modality ones with
    their fallback, as the ensemble will be used). Ties go to the w closest to 0.5 (plain
    averaging, the paper's validation fusion)."""
    grid = np.linspace(0.0, 1.0, steps)
    scores = np.array([auroc(y_true, mrp_probability(p_mg, p_mr, w)) for w in grid])
    best = np.flatnonzero(np.isclose(scores, scores.max(), rtol=0.0, atol=1e-12))
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
