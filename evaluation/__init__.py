"""Evaluation of the pCR bundles: statistics of prediction CSVs (metrics with bootstrap CIs,
DeLong's test, decision curves, subgroups, figures, report) and the train/validation/test and
nested cross-validation drivers that produce them."""

from .decision import decision_curve
from .delong import DeLongResult, delong_test, delong_test_unpaired
from .metrics import (
    auprc,
    auroc,
    bootstrap_ci,
    brier,
    calibration_intercept,
    calibration_slope,
    expected_calibration_error,
    metric_summary,
    operating_point,
    youden_threshold,
)

__all__ = ["DeLongResult", "auprc", "auroc", "bootstrap_ci", "brier", "calibration_intercept", "calibration_slope",
           "decision_curve", "delong_test", "delong_test_unpaired", "expected_calibration_error", "metric_summary",
           "operating_point", "youden_threshold"]
