"""Subgroup AUROCs and odds ratios against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom
from scipy.stats.contingency import odds_ratio

from evaluation.metrics import auroc
from evaluation.subgroups import clinical_table, odds_ratios, subgroup_auroc, with_clinical, woolf_odds_ratio


def test_odds_ratio_hand_example():
    # HR negative: 6 pCR of 10 (most common level is HR positive: 3 of 15)
    frame = pd.DataFrame({"label": [1] * 6 + [0] * 4 + [1] * 3 + [0] * 12,
                          "HR": ["negative"] * 10 + ["positive"] * 15})
    row = odds_ratios(frame, ["HR"]).iloc[0]
    assert (row.level, row.reference, row.patients, row.pcr) == ("negative", "positive", 10, 6)
    assert row.odds_ratio == pytest.approx((6 / 4) / (3 / 12))
    se = np.sqrt(1 / 6 + 1 / 4 + 1 / 3 + 1 / 12)  # Woolf
    assert row.low == pytest.approx(np.exp(np.log(6.0) - 1.959964 * se), rel=1e-4)
    assert row.high == pytest.approx(np.exp(np.log(6.0) + 1.959964 * se), rel=1e-4)
    # Fisher: sum of the hypergeometric probabilities of the tables (margins fixed) no more likely than this one
    tables = hypergeom(25, 9, 10)  # 25 patients, 9 pCR, 10 HR negative
    observed = tables.pmf(6)
    assert row.p_value == pytest.approx(sum(tables.pmf(k) for k in range(10) if tables.pmf(k) <= observed * (1 + 1e-7)))


@pytest.mark.parametrize("table", [[[6, 4], [3, 12]], [[1, 9], [20, 3]], [[40, 2], [7, 7]]])
def test_woolf_matches_scipy(table):
    table = np.array(table)
    ours = woolf_odds_ratio(table)
    theirs = odds_ratio(table, kind="sample")
    assert ours["odds_ratio"] == pytest.approx(theirs.statistic)
    assert (ours["low"], ours["high"]) == pytest.approx(tuple(theirs.confidence_interval(0.95)))


def test_zero_cell_gets_the_haldane_correction():
    ours = woolf_odds_ratio(np.array([[5, 0], [3, 12]]))
    assert ours["haldane"] and ours["odds_ratio"] == pytest.approx(5.5 * 12.5 / (0.5 * 3.5))
    assert np.isfinite([ours["low"], ours["high"]]).all()


def test_subgroup_auroc_is_the_auroc_within_each_level():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"label": rng.binomial(1, 0.4, 80), "site": rng.choice(["S01", "S02"], 80)})
    frame["probability"] = np.clip(0.3 + 0.3 * frame.label + rng.normal(0, 0.2, 80), 0, 1)
    frame.loc[frame.index[:5], "site"] = "S03"
    frame.loc[frame.index[:5], "label"] = 0  # a level with one class has no AUROC
    table = subgroup_auroc(frame, ["site"], n_resamples=50).set_index("level")
    for site in ("S01", "S02"):
        group = frame[frame.site == site]
        assert table.loc[site, "auroc"] == pytest.approx(auroc(group.label, group.probability))
        assert table.loc[site, "low"] < table.loc[site, "auroc"] < table.loc[site, "high"]
        assert table.loc[site, "patients"] == len(group)
    assert np.isnan(table.loc["S03", "auroc"]) and table.loc["S03", "pcr"] == 0


def test_clinical_table_from_the_datalist(fake_prepared):
    table = clinical_table(fake_prepared)
    assert {"id", "site", "HR", "HER2", "BluePrint", "arm"} <= set(table)
    assert set(table.HR) <= {"positive", "negative"}
    predictions = table[["id"]].assign(probability=0.5, label=0)
    assert len(with_clinical(predictions, table)) == len(table)
    with pytest.raises(ValueError, match="not in the cohort's datalist, e.g. nobody"):
        with_clinical(pd.concat([predictions, pd.DataFrame({"id": ["nobody"], "probability": [0.5], "label": [1]})]),
                      table)
