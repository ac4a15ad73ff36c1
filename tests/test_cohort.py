import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from preprocessing.cohort import ORACLE_VISITS, oracle_probability, sample_cohort


@pytest.fixture(scope="module")
def big():
    return sample_cohort(20000, 3, seed=11)


def test_marginals_close_to_table_1(big):
    clinical, _, _ = big
    assert 0.29 <= clinical["pCR"].mean() <= 0.39  # paper: 213 / 624 = 34 %
    assert 0.47 <= clinical["HR"].mean() <= 0.61  # 338 / 624
    assert 0.15 <= clinical["HER2"].mean() <= 0.32  # 152 / 624
    assert 0.74 <= (clinical["race"] == "White").mean() <= 0.88  # 504 / 624
    assert ((clinical["ER"] | clinical["PR"]) == clinical["HR"]).all()
    agents = clinical.filter(like="agent_")
    assert agents.shape[1] == 12 and (agents.sum(axis=1) >= 1).all()


def test_pcr_ordering_by_receptor_subtype(big):
    clinical, _, _ = big
    rate = clinical.groupby(["HR", "HER2"])["pCR"].mean()
    assert rate[(0, 1)] > rate[(0, 0)] > rate[(1, 0)]
    assert rate[(1, 1)] > rate[(1, 0)]


def test_oracles_are_calibrated_and_more_visits_inform_more(big):
    clinical, truth, _ = big
    aucs = [roc_auc_score(clinical["pCR"], truth[name]) for name in ORACLE_VISITS]
    assert all(a < b for a, b in zip(aucs, aucs[1:])), aucs
    assert 0.70 <= aucs[0] <= 0.82  # clinical + subtype alone: moderate
    for name in ORACLE_VISITS:  # exact posteriors: predicted and observed rates agree in every decile
        p = truth[name].to_numpy()
        bins = np.quantile(p, np.linspace(0, 1, 11))
        idx = np.clip(np.digitize(p, bins[1:-1]), 0, 9)
        for b in range(10):
            sel = idx == b
            assert abs(p[sel].mean() - clinical["pCR"][sel].mean()) < 0.05, (name, b)


def test_oracle_with_zero_visits_is_the_clinical_probit():
    mu = np.array([-1.0, 0.0, 0.5])
    np.testing.assert_allclose(oracle_probability(mu, np.zeros((3, 4)), 0), [0.158655, 0.5, 0.691462], atol=1e-6)
