"""Performance metrics of a pCR probability, scikit-learn style ``f(y_true, y_score, ...)``.

Discrimination (AUROC, AUPRC), operating-point metrics at a probability threshold, the Youden
threshold (to be chosen on validation data, never on the reported test set), Brier score,
calibration intercept and slope, expected calibration error, and percentile bootstrap CIs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.linalg import LinAlgWarning
from scipy.optimize import brentq
from scipy.special import expit, logit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

CLIP = 1e-6  # probabilities are clipped to [CLIP, 1 - CLIP] before taking logits


def check_binary(y_true, y_score, probability: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels as int, scores as float)``; ValueError names what is wrong."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=float)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.shape[0]} values but y_score has {s.shape[0]}")
    if y.size == 0:
        raise ValueError("no patients")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y_true must hold 0/1 labels, got values {sorted(set(np.unique(y).tolist()) - {0, 1})[:5]}")
    if not np.isfinite(s).all():
        raise ValueError(f"y_score has {int((~np.isfinite(s)).sum())} missing or infinite value(s)")
    if probability and ((s < 0) | (s > 1)).any():
        raise ValueError("y_score must be probabilities in [0, 1]")
    return y.astype(int), s


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.min() == y.max():
        raise ValueError(f"y_true has a single class; {what} is undefined")


def auroc(y_true, y_score) -> float:
    y, s = check_binary(y_true, y_score, probability=False)
    _both_classes(y, "AUROC")
    return float(roc_auc_score(y, s))


def auprc(y_true, y_score) -> float:
    """Average precision (the step-wise area under the precision-recall curve; the trapezoidal
    area over-states it because PR curves are not linear between operating points)."""
    y, s = check_binary(y_true, y_score, probability=False)
    _both_classes(y, "AUPRC")
    return float(average_precision_score(y, s))


def operating_point(y_true, y_prob, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV calling pCR when ``y_prob >= threshold``.
    A ratio with an empty denominator (e.g. PPV when nobody is called positive) is NaN."""
    y, p = check_binary(y_true, y_prob)
    called = p >= threshold
    tp, fp = np.sum(called & (y == 1)), np.sum(called & (y == 0))
    fn, tn = np.sum(~called & (y == 1)), np.sum(~called & (y == 0))

    def ratio(a, b):
        return float(a / (a + b)) if a + b else float("nan")

    return {"sensitivity": ratio(tp, fn), "specificity": ratio(tn, fp), "ppv": ratio(tp, fp), "npv": ratio(tn, fn)}


def youden_threshold(y_true, y_prob) -> float:
    """Probability threshold maximising sensitivity + specificity - 1 on the data given; call it
    with validation predictions. Ties go to the highest threshold (fewest positive calls)."""
    y, p = check_binary(y_true, y_prob)
    _both_classes(y, "the Youden threshold")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # roc_curve's first threshold is +inf (nobody called positive)
    j = (tpr - fpr)[finite]
    return float(thresholds[finite][np.argmax(j)])


def brier(y_true, y_prob) -> float:
    y, p = check_binary(y_true, y_prob)
    return float(brier_score_loss(y, p))


def calibration_intercept(y_true, y_prob) -> float:
    """Calibration-in-the-large: ``a`` in logit P(y) = a + logit(p) (logit(p) as offset); 0 when
    the mean predicted probability matches the event rate on the logit scale."""
    y, p = check_binary(y_true, y_prob)
    _both_classes(y, "the calibration intercept")
    offset = logit(np.clip(p, CLIP, 1 - CLIP))
    # the maximum-likelihood a solves sum(y) = sum(expit(a + offset)), monotone in a
    return float(brentq(lambda a: expit(a + offset).sum() - y.sum(), -50, 50))


def calibration_slope(y_true, y_prob) -> float:
    """``b`` in logit P(y) = a + b logit(p): 1 is ideal, below 1 means over-confident predictions."""
    y, p = check_binary(y_true, y_prob)
    _both_classes(y, "the calibration slope")
    x = logit(np.clip(p, CLIP, 1 - CLIP))[:, None]
    # Newton steps: lbfgs stops early (ABNORMAL line search) when some logits are extreme. Under
    # (quasi-)separation, as in some bootstrap resamples of small sets, the maximum-likelihood slope
    # does not exist: the solver's large value is kept (an extreme resample for the percentile
    # interval) and the solver's warnings silenced.
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-10, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        return float(model.fit(x, y).coef_[0, 0])


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """Sum over equal-width probability bins of (bin share) x |mean label - mean probability|.
    A probability equal to a bin edge falls in the upper bin; 1.0 in the last bin."""
    y, p = check_binary(y_true, y_prob)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, y, n_bins) - np.bincount(bins, p, n_bins))  # = count x |mean gap|
    return float(gap.sum() / counts.sum())


def bootstrap_indices(y_true, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n)`` patient indices of a stratified bootstrap: positives and negatives are
    resampled separately (as pROC does by default), so every resample holds both classes and the
    class balance of the reported set."""
    y = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(y == c), size=(n_resamples, int((y == c).sum()))) for c in np.unique(y)]
    return np.concatenate(parts, axis=1)


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, ignoring undefined (NaN) replicates."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(metric: Callable[..., float], y_true, *scores, n_resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``metric(y_true, *scores)`` with a percentile CI from
    ``n_resamples`` seeded stratified patient-level bootstrap resamples."""
    y = np.asarray(y_true)
    arrays = [np.asarray(s) for s in scores]
    estimate = metric(y, *arrays)
    replicates = [metric(y[i], *(a[i] for a in arrays)) for i in bootstrap_indices(y, n_resamples, seed)]
    return (float(estimate), *percentile_interval(replicates, level))


def all_metrics(y_true, y_prob, youden_prob=None) -> dict[str, float]:
    """Every metric of the report for one set of predictions. ``youden_prob``: the probabilities
    as called at the Youden operating point, threshold 0.5 (``report.youden_scores``); None skips them."""
    y, p = check_binary(y_true, y_prob)
    values = {"AUROC": auroc(y, p), "AUPRC": auprc(y, p)}
    values.update({f"{name} @0.5": v for name, v in operating_point(y, p, 0.5).items()})
    if youden_prob is not None:
        values.update({f"{name} @Youden": v for name, v in operating_point(y, youden_prob, 0.5).items()})
    values.update({"Brier": brier(y, p), "calibration intercept": calibration_intercept(y, p),
                   "calibration slope": calibration_slope(y, p), "ECE": expected_calibration_error(y, p)})
    return values


def metric_summary(y_true, y_prob, youden_prob=None, n_resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """``{metric: (estimate, low, high)}`` for ``all_metrics``, every CI from the same seeded
    stratified patient-level bootstrap resamples."""
    y, p = check_binary(y_true, y_prob)
    q = None if youden_prob is None else check_binary(y, youden_prob)[1]
    estimate = all_metrics(y, p, q)
    replicates = [all_metrics(y[i], p[i], None if q is None else q[i]) for i in bootstrap_indices(y, n_resamples, seed)]
    return {name: (value, *percentile_interval([r[name] for r in replicates], level)) for name, value in estimate.items()}
