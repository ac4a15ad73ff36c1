"""DeLong's test against its direct O(m*n) definition, sklearn's AUROC and a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from evaluation.delong import auc_covariance, delong_test, delong_test_unpaired


def naive_covariance(y, scores):
    """DeLong et al. (1988) directly: psi over every positive-negative pair."""
    y = np.asarray(y).astype(bool)
    v10, v01, aucs = [], [], []
    for s in scores:
        s = np.asarray(s, dtype=float)
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    return np.array(aucs), np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]


@pytest.mark.parametrize("seed,n,prevalence", [(0, 40, 0.5), (1, 97, 0.2), (2, 300, 0.33), (3, 25, 0.88)])
def test_fast_midrank_equals_direct_definition_with_ties(seed, n, prevalence):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    a = np.round(rng.random(n) + 0.4 * y, 1)  # rounding makes many ties, within and across classes
    b = np.round(0.5 * a + rng.random(n), 1)
    aucs, cov = auc_covariance(y, a, b)
    expected_aucs, expected_cov = naive_covariance(y, [a, b])
    np.testing.assert_allclose(aucs, expected_aucs, atol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, a), roc_auc_score(y, b)], atol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, atol=1e-12)
    result = delong_test(y, a, b)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert result.z == pytest.approx(z) and result.p_value == pytest.approx(2 * norm.sf(abs(z)))
    swapped = delong_test(y, b, a)
    assert swapped.z == pytest.approx(-result.z) and swapped.p_value == pytest.approx(result.p_value)


def test_hand_worked_example():
    # positives score 0.9 and 0.4, negatives 0.5 and 0.1: AUROC 3/4; V10 = (1, 1/2), V01 = (1/2, 1);
    # var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125
    aucs, cov = auc_covariance([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    assert aucs[0] == pytest.approx(0.75) and cov[0, 0] == pytest.approx(0.125)
    # identical scores: no difference, p = 1
    same = delong_test([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [0.9, 0.4, 0.5, 0.1])
    assert (same.z, same.p_value) == (0.0, 1.0)


def test_unpaired_test_adds_variances():
    rng = np.random.default_rng(5)
    y_a, y_b = rng.integers(0, 2, 60), rng.integers(0, 2, 80)
    a, b = rng.random(60) + 0.3 * y_a, rng.random(80) + 0.1 * y_b
    result = delong_test_unpaired(y_a, a, y_b, b)
    auc_a, var_a = naive_covariance(y_a, [a])
    auc_b, var_b = naive_covariance(y_b, [b])
    assert result.auc_a == pytest.approx(auc_a[0]) and result.auc_b == pytest.approx(auc_b[0])
    assert result.var_a == pytest.approx(float(var_a))
    assert result.var_b == pytest.approx(float(var_b)) and result.covariance == 0
    z = (result.auc_a - result.auc_b) / np.sqrt(result.var_a + result.var_b)
    assert result.z == pytest.approx(z)


@pytest.mark.parametrize("y,a,b,message", [
    ([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], "single class"),
    ([1, 0, 1], [0.1, 0.2], [0.3, 0.2, 0.1], "do not match"),
    ([1, 0, 2], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], "0/1 labels"),
    ([1, 0, 1], [0.1, np.nan, 0.3], [0.3, 0.2, 0.1], "NaN"),
])
def test_invalid_input(y, a, b, message):
    with pytest.raises(ValueError, match=message):
        delong_test(y, a, b)
