"""Decision curve analysis (Vickers & Elkin 2006), as the MRP paper uses it (Gao et al., Fig. 5).

Net benefit of acting on the patients whose predicted probability of the target event is at
least the threshold probability pt: TP/N - FP/N x pt/(1 - pt), against acting on everyone
("treat all") and on no one (0). Two clinical directions:

- ``target="non_pcr"``: identify non-responders before or mid treatment (e.g. to offer an
  alternative therapy); the event is non-pCR and its probability is 1 - P(pCR).
- ``target="pcr"``: identify responders before surgery (e.g. for a surgery-reducing trial).

Net interventions avoided are given per 1,000 patients, as the MRP paper reports them (Fig. 5):
(net benefit - net benefit of treat all) / (pt / (1 - pt)) x 1000, as ``dcurves`` computes them
with ``nper=1000``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import bootstrap_indices, check_binary, percentile_interval

TARGETS = {"pcr": "identify pCR (e.g. before surgery)", "non_pcr": "identify non-pCR (before / mid treatment)"}
PER_PATIENTS = 1000
# the scale is in the column name, so a reader of an older per-100 table cannot mix the two up
NIA = f"net_interventions_avoided_per_{PER_PATIENTS}"
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)


def _net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit at each threshold; ``y``, ``p`` may be 2-D (resamples x patients)."""
    called = p[..., None] >= thresholds  # (..., patients, thresholds)
    tp = (called & (y[..., None] == 1)).sum(axis=-2)
    fp = (called & (y[..., None] == 0)).sum(axis=-2)
    n = y.shape[-1]
    return tp / n - fp / n * thresholds / (1 - thresholds)


def decision_curve(y_true, prob, thresholds=DEFAULT_THRESHOLDS, target: str = "pcr", n_resamples: int = 1000,
                   seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Columns ``threshold, net_benefit, net_benefit_low, net_benefit_high, net_benefit_all`` and
    ``NIA`` (net interventions avoided per 1,000 patients) with ``NIA_low, NIA_high``; bands from
    seeded stratified patient-level bootstrap resamples (``n_resamples=0``: no bands).

    ``y_true`` is pCR (1) / non-pCR (0) and ``prob`` is P(pCR), whatever the target."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    y, p = check_binary(y_true, prob)
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.ndim != 1 or thresholds.size == 0 or ((thresholds <= 0) | (thresholds >= 1)).any():
        raise ValueError("thresholds must be a non-empty 1-D list of probabilities strictly between 0 and 1")
    if target == "non_pcr":
        y, p = 1 - y, 1 - p
    odds = thresholds / (1 - thresholds)
    prevalence = y.mean()
    frame = pd.DataFrame({"threshold": thresholds, "net_benefit": _net_benefit(y, p, thresholds)})
    frame["net_benefit_all"] = prevalence - (1 - prevalence) * odds
    frame[NIA] = (frame.net_benefit - frame.net_benefit_all) / odds * PER_PATIENTS
    if n_resamples:
        index = bootstrap_indices(y, n_resamples, seed)
        benefit = _net_benefit(y[index], p[index], thresholds)  # (resamples, thresholds)
        avoided = (benefit - (prevalence - (1 - prevalence) * odds)) / odds * PER_PATIENTS  # stratified: fixed prevalence
        frame["net_benefit_low"], frame["net_benefit_high"] = np.array([percentile_interval(b, level) for b in benefit.T]).T
        frame[f"{NIA}_low"], frame[f"{NIA}_high"] = np.array([percentile_interval(a, level) for a in avoided.T]).T
    frame.insert(0, "target", target)
    return frame
