"""Known-answer tests of evaluation.metrics."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.special import expit, logit

from evaluation.delong import delong_test
from evaluation.metrics import (
    all_metrics,
    auprc,
    auroc,
    bootstrap_ci,
    bootstrap_indices,
    brier,
    calibration_intercept,
    calibration_slope,
    expected_calibration_error,
    metric_summary,
    operating_point,
    youden_threshold,
)

Y = np.array([0, 0, 1, 1])
S = np.array([0.1, 0.4, 0.35, 0.8])


def test_auroc_and_auprc_hand_example():
    assert auroc(Y, S) == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered correctly
    # ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision 1 at recall 1/2, 2/3 at recall 1
    assert auprc(Y, S) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_operating_point_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5, 0.5])  # >= 0.5 called positive: TP 3, FN 1, FP 2, TN 2
    assert operating_point(y, p, 0.5) == pytest.approx({"sensitivity": 3 / 4, "specificity": 2 / 4, "ppv": 3 / 5,
                                                        "npv": 2 / 3})
    nobody = operating_point(y, p, 0.95)
    assert nobody["sensitivity"] == 0 and nobody["specificity"] == 1 and np.isnan(nobody["ppv"])
    per_patient = operating_point(y, p, np.where(np.arange(8) < 4, 0.5, 0.95))
    assert per_patient["sensitivity"] == pytest.approx(2 / 4)  # patient 8 (p 0.5) now below its threshold


def test_youden_threshold_hand_example():
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # threshold 0.4: sens 1, spec 3/4 (J 0.75); 0.6: sens 3/4, spec 1 (J 0.75): tie -> the higher threshold
    assert youden_threshold(y, p) == pytest.approx(0.6)
    assert youden_threshold(y, np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.6, 0.7, 0.8])) == pytest.approx(0.6)  # J = 1


def test_brier_and_ece_hand_example():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.15, 0.55, 0.45])
    assert brier(y, p) == pytest.approx((0.01 + 0.0225 + 0.2025 + 0.2025) / 4)
    # bins: [0.1, 0.2) {0.15 -> y 0}, [0.4, 0.5) {0.45 -> 0}, [0.5, 0.6) {0.55 -> 1}, [0.9, 1] {0.9 -> 1}
    assert expected_calibration_error(y, p) == pytest.approx((0.15 + 0.45 + 0.45 + 0.1) / 4)
    # two bins: {0.15, 0.45} mean p 0.3, rate 0; {0.55, 0.9} mean p 0.725, rate 1
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx((2 * 0.3 + 2 * 0.275) / 4)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0  # 1.0 belongs to the last bin


def test_calibration_intercept_constant_prediction():
    y = np.array([1] * 30 + [0] * 70)
    assert calibration_intercept(y, np.full(100, 0.5)) == pytest.approx(logit(0.3) - logit(0.5), abs=1e-9)


def test_calibration_slope_two_groups_saturated():
    # two groups with predicted logits -1 and 1 and observed rates 0.2 and 0.9: the logistic
    # recalibration fits both rates exactly, so slope = (logit 0.9 - logit 0.2) / 2
    y = np.array([1] * 2 + [0] * 8 + [1] * 9 + [0] * 1)
    p = expit(np.array([-1.0] * 10 + [1.0] * 10))
    assert calibration_slope(y, p) == pytest.approx((logit(0.9) - logit(0.2)) / 2, rel=1e-5)


def test_calibration_against_statsmodels():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.98, 300)
    y = rng.binomial(1, expit(0.3 + 0.7 * logit(p)))
    x = logit(p)
    slope = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit().params[1]
    intercept = sm.GLM(y, np.ones_like(x), family=sm.families.Binomial(), offset=x).fit().params[0]
    assert calibration_slope(y, p) == pytest.approx(slope, rel=1e-5)
    assert calibration_intercept(y, p) == pytest.approx(intercept, rel=1e-6)


def test_overconfident_predictions_have_slope_below_one():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.05, 0.95, 20000)
    y = rng.binomial(1, truth)
    assert calibration_slope(y, truth) == pytest.approx(1, abs=0.05)
    assert calibration_slope(y, expit(2 * logit(truth))) == pytest.approx(0.5, abs=0.03)
    assert calibration_intercept(y, truth) == pytest.approx(0, abs=0.05)


def test_bootstrap_is_stratified_and_seeded():
    y = np.array([1] * 7 + [0] * 13)
    index = bootstrap_indices(y, 50, seed=1)
    assert index.shape == (50, 20)
    assert (y[index].sum(axis=1) == 7).all()  # every resample keeps the class counts
    assert (index == bootstrap_indices(y, 50, seed=1)).all()
    assert not (index == bootstrap_indices(y, 50, seed=2)).all()


def test_bootstrap_auroc_ci_agrees_with_delong_variance():
    rng = np.random.default_rng(5)
    y = rng.binomial(1, 0.35, 400)
    s = rng.normal(y * 1.0, 1.0)
    estimate, low, high = bootstrap_ci(auroc, y, s, n_resamples=1000, seed=0)
    se = np.sqrt(delong_test(y, s, s).var_a)
    assert estimate == pytest.approx(auroc(y, s))
    assert low < estimate < high
    assert low == pytest.approx(estimate - 1.96 * se, abs=0.012)
    assert high == pytest.approx(estimate + 1.96 * se, abs=0.012)


def test_metric_summary_every_metric_with_ci():
    rng = np.random.default_rng(2)
    y = rng.binomial(1, 0.3, 120)
    p = expit(rng.normal(2 * y - 1, 1.2))
    summary = metric_summary(y, p, youden_prob=p, n_resamples=100, seed=0)
    assert set(summary) == set(all_metrics(y, p, p))
    assert "sensitivity @Youden" in summary and "ECE" in summary
    for name, (estimate, low, high) in summary.items():
        assert np.isfinite([estimate, low, high]).all() and low <= high, name
    assert summary["AUROC"][1] < summary["AUROC"][0] < summary["AUROC"][2]
    assert "sensitivity @Youden" not in metric_summary(y, p, n_resamples=10)


@pytest.mark.parametrize("call, message", [
    (lambda: auroc([0, 1, 1], [0.1, 0.2]), "3 values"),
    (lambda: auroc([1, 1], [0.1, 0.2]), "single class"),
    (lambda: auroc([0, 2], [0.1, 0.2]), "0/1 labels"),
    (lambda: brier([0, 1], [0.1, np.nan]), "missing"),
    (lambda: brier([0, 1], [0.1, 1.2]), r"\[0, 1\]"),
    (lambda: youden_threshold([0, 0], [0.1, 0.2]), "single class"),
])
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
