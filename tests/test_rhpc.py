"""The MRP model's rhpc variables of the synthetic cohort: consistency, missingness, pCR
associations as in Gao et al. (Table 2), and the exact rhpc oracle."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from preprocessing.cohort import (
    IMAGED, LINKED, MG_A, MG_B, MG_S, OBS_A, OBS_B, OBS_S, RHPC_COLUMNS, RHPC_ORACLES, oracle_probability,
    rhpc_log_likelihood, rhpc_oracle, sample_cohort,
)
from preprocessing.schema import UNKNOWN, preset

N_OLD_CLINICAL, N_OLD_TRUTH = 28, 10  # columns of clinical.csv (id .. pCR) and truth.csv before rhpc


@pytest.fixture(scope="module")
def big():
    clinical, truth, _ = sample_cohort(20000, 3, seed=11)
    return clinical, truth


def _odds_ratio(clinical, exposed, reference):
    a, b = clinical["pCR"][exposed].mean(), clinical["pCR"][reference].mean()
    return a / (1 - a) / (b / (1 - b))


def _digest(table: pd.DataFrame) -> str:
    return hashlib.sha256(table.to_csv(index=False, float_format="%.10g").encode()).hexdigest()[:16]


def _mu(truth):
    return norm.ppf(truth["p_clinical"].to_numpy())  # p_clinical = norm.cdf(mu)


def test_existing_columns_of_seed_0_are_unchanged():
    """Digests of sample_cohort(240, 3, 0) computed with the code before the rhpc variables."""
    clinical, truth, _ = sample_cohort(240, 3, 0)
    assert _digest(clinical.iloc[:, :N_OLD_CLINICAL]) == "e7c39428a2d6fd4b"
    assert _digest(truth.iloc[:, :N_OLD_TRUTH]) == "86ac752f133b4ff0"
    assert tuple(clinical.columns[N_OLD_CLINICAL:]) == RHPC_COLUMNS
    assert list(truth.columns[N_OLD_TRUTH:]) == ["y_MG", *RHPC_ORACLES, *(f"true_{c}" for c in IMAGED)]
    # the truth keeps what the table leaves blank
    for column in IMAGED:
        known = clinical[column].notna()
        assert (clinical.loc[known, column] == truth.loc[known, f"true_{column}"]).all()
        assert truth[f"true_{column}"].notna().all()


def test_t0_oracles_change_no_other_value(monkeypatch, tmp_path):
    """The pre-treatment oracles (MRI T0 only) draw no random number: without them the same seed
    gives the same clinical table, the same other truth columns and the same rendering jobs (all
    the DICOM renderers read, so the same images)."""
    from preprocessing import cohort
    from preprocessing.synth import patient_jobs

    new = ["p_rhpc_mri_t0", "p_rhpc_mg_mri_t0"]
    assert RHPC_ORACLES["p_rhpc_mri_t0"] == (1, False) and RHPC_ORACLES["p_rhpc_mg_mri_t0"] == (1, True)
    state = np.random.get_state()
    clinical, truth, jobs = patient_jobs(tmp_path, 24, 3, seed=5, resolution="demo", visits="realistic")
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    monkeypatch.setattr(cohort, "RHPC_ORACLES", {k: v for k, v in RHPC_ORACLES.items() if k not in new})
    old_clinical, old_truth, old_jobs = patient_jobs(tmp_path, 24, 3, seed=5, resolution="demo", visits="realistic")
    assert new[0] not in old_truth
    pd.testing.assert_frame_equal(clinical, old_clinical)
    pd.testing.assert_frame_equal(truth.drop(columns=new), old_truth)
    pd.testing.assert_frame_equal(pd.DataFrame([j["patient"] for j in jobs]).drop(columns=new),
                                  pd.DataFrame([j["patient"] for j in old_jobs]))
    assert [{k: v for k, v in j.items() if k != "patient"} for j in jobs] == [
        {k: v for k, v in j.items() if k != "patient"} for j in old_jobs]


def test_values_are_the_schema_levels():
    clinical, _, _ = sample_cohort(3000, 4, 2)
    fields = {f.name: f for f in preset("synthetic").fields if f.group == "rhpc"}
    assert sorted(fields) == sorted(RHPC_COLUMNS)
    for name, field in fields.items():
        assert field.type == "category" and field.optional and field.column == name
        values = {field.parse({name: v}) for v in clinical[name].unique()}
        assert values == set(field.vocabulary()), name  # every level occurs, blanks read as unknown


def test_consistency_with_the_clinical_data(big):
    clinical, _ = big
    hr, her2 = clinical["HR"], clinical["HER2"]
    expected = np.select([(hr == 0) & (her2 == 0), (hr == 0) & (her2 == 1), (hr == 1) & (her2 == 1),
                          clinical["Ki67"] >= 20], ["triple negative", "HER2-enriched", "triple positive",
                                                    "luminal B"], "luminal A")
    known = clinical["molecular_subtype"].notna()
    assert (clinical["molecular_subtype"][known] == expected[known]).all()
    menopause = clinical.dropna(subset=["menopausal_status"])
    assert (menopause["menopausal_status"][menopause["age"] < 40] == "pre").all()
    assert (menopause["menopausal_status"][menopause["age"] > 58] == "post").all()
    assert 0.05 < (menopause["menopausal_status"][menopause["age"].between(45, 55)] == "post").mean() < 0.95
    for column, flag in (("immunotherapy", clinical["agent_pembrolizumab"] == 1),
                         ("chemotherapy", (clinical["agent_paclitaxel"] | clinical["agent_carboplatin"]) == 1)):
        known = clinical[column].notna()
        assert ((clinical[column] == "yes") == flag)[known].all(), column
    assert (clinical["HR"][clinical["hormonal_therapy"] == "yes"] == 1).all()
    assert (clinical["chemotherapy"] == "no").any()  # the T-DM1 + pertuzumab arm


def test_missingness_per_variable_and_site(big):
    clinical, _ = big
    unknown = clinical[list(RHPC_COLUMNS)].isna().mean()
    for name in ("tumour_location", "laterality", "molecular_subtype", "histology", "menopausal_status"):
        assert unknown[name] < 0.01, name
    assert 0.03 < unknown["focality"] < 0.12 and 0.04 < unknown["differentiation"] < 0.12
    assert unknown[["brca1", "brca2", "chek2", "tp53"]].min() > 0.75  # genes: untested in most patients
    by_site = clinical[list(RHPC_COLUMNS)].isna().groupby(clinical["site"]).mean()
    assert by_site.loc["S02", "brca1"] == 1.0 and by_site.drop(index="S02")["brca1"].max() < 0.95
    assert (by_site["differentiation"].max() - by_site["differentiation"].min()) > 0.01  # sites differ
    genes = clinical[["brca1", "brca2", "chek2", "tp53"]]
    assert (genes.isna().all(axis=1) | genes.notna().all(axis=1)).all()  # one panel per patient


def test_pcr_associations_have_the_papers_directions(big):
    clinical, _ = big

    def rate(column):
        return clinical.groupby(column)["pCR"].mean()

    # lobular: OR 1 / 6.19 against ductal; multifocal or satellite: ~0.5 against unifocal; in situ: 0.51
    assert 0.1 < _odds_ratio(clinical, clinical["histology"] == "lobular", clinical["histology"] == "ductal") < 0.3
    assert 0.35 < _odds_ratio(clinical, clinical["focality"].isin(["multifocal", "satellite"]),
                              clinical["focality"] == "unifocal") < 0.7
    assert 0.35 < _odds_ratio(clinical, clinical["in_situ_component"] == "yes",
                              clinical["in_situ_component"] == "no") < 0.7
    assert 0.95 < _odds_ratio(clinical, clinical["breast_density"].isin(["C", "D"]),
                              clinical["breast_density"].isin(["A", "B"])) < 1.3
    focality, grade = rate("focality"), rate("differentiation")
    assert focality["multifocal"] < focality["satellite"] < focality["unifocal"]
    assert grade["well"] < grade["moderate"] < grade["poor"]
    subtype = rate("molecular_subtype")
    assert min(subtype["HER2-enriched"], subtype["triple negative"]) > max(subtype["luminal A"], subtype["luminal B"])
    assert rate("cT")["T3"] < rate("cT")["T1"] and rate("cN")["N0"] > rate("cN")["N1"]
    assert rate("cM")["M1"] < rate("cM")["M0"]
    # location and laterality: unrelated to pCR
    assert abs(rate("laterality")["left"] - rate("laterality")["right"]) < 0.03
    assert abs(rate("tumour_location")["C50.4"] - rate("tumour_location")["C50.2"]) < 0.04


def test_oracle_reduces_to_the_closed_form_when_no_rhpc_value_is_known(big):
    clinical, truth = big
    blank = clinical.iloc[:2000].copy()
    blank[list(LINKED)] = None
    mu, y, y_mg = _mu(truth)[:2000], truth[["y_T0", "y_T1", "y_T2", "y_T3"]].to_numpy()[:2000], truth["y_MG"][:2000]
    for n_visits in range(4):
        np.testing.assert_allclose(rhpc_oracle(blank, mu, y, n_visits), oracle_probability(mu, y, n_visits),
                                   atol=1e-12)
    # with the mammogram: one more linear-Gaussian observation in the closed form
    b, s = np.append(OBS_B[:3], MG_B), np.append(OBS_S[:3], MG_S)
    precision = 1 + np.sum(b**2 / s**2)
    mean = (mu + (np.column_stack([y[:, :3], y_mg]) - np.append(OBS_A[:3], MG_A)) @ (b / s**2)) / precision
    np.testing.assert_allclose(rhpc_oracle(blank, mu, y, 3, y_mg.to_numpy()), norm.cdf(mean * np.sqrt(precision)),
                               atol=1e-12)


def test_oracle_matches_a_brute_force_integral(big):
    clinical, truth = big
    patients = clinical.iloc[:300].reset_index(drop=True)
    mu = _mu(truth)[:300]
    grid = (np.arange(-16000, 16000) + 0.5) * 5e-4  # midpoints: r = 0 is a cell edge
    log_post = -0.5 * (grid - mu[:, None]) ** 2 + rhpc_log_likelihood(patients, np.broadcast_to(grid, (300, grid.size)))
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    brute = post[:, grid > 0].sum(axis=1) / post.sum(axis=1)
    np.testing.assert_allclose(rhpc_oracle(patients, mu, np.zeros((300, 4)), 0), brute, atol=1e-6)
    assert np.abs(brute - norm.cdf(mu)).max() > 0.2  # the rhpc values do inform


def test_rhpc_oracles_are_calibrated_and_images_add_information(big):
    clinical, truth = big
    aucs = {name: roc_auc_score(clinical["pCR"], truth[name])
            for name in ("p_clinical", "p_rhpc", "p_rhpc_mg", "p_rhpc_mri", "p_rhpc_mg_mri")}
    values = list(aucs.values())
    assert all(a < b for a, b in zip(values, values[1:])), aucs
    # MRI T0 alone (pre-treatment) adds a little; T0-T2 more
    for without, t0, t0_t2 in (("p_rhpc", "p_rhpc_mri_t0", "p_rhpc_mri"), ("p_rhpc_mg", "p_rhpc_mg_mri_t0",
                                                                            "p_rhpc_mg_mri")):
        assert aucs[without] < roc_auc_score(clinical["pCR"], truth[t0]) < aucs[t0_t2], t0
    assert roc_auc_score(clinical["pCR"], truth["p_rhpc_mri_t0"]) > roc_auc_score(clinical["pCR"], truth["p_t0"])
    assert aucs["p_rhpc_mri"] > roc_auc_score(clinical["pCR"], truth["p_t0_t2"])  # rhpc adds to the same MRI
    for name in RHPC_ORACLES:  # exact posteriors: predicted and observed rates agree in every decile
        p = truth[name].to_numpy()
        decile = pd.qcut(p, 10, labels=False, duplicates="drop")
        observed = clinical["pCR"].groupby(decile).mean()
        predicted = pd.Series(p).groupby(decile).mean()
        assert (observed - predicted).abs().max() < 0.05, name
    slope, intercept = np.polyfit(truth["latent_response"], truth["y_MG"], 1)
    assert slope == pytest.approx(MG_B, abs=0.03) and intercept == pytest.approx(MG_A, abs=0.03)
    assert UNKNOWN not in clinical[list(RHPC_COLUMNS)].to_numpy()  # unknown is a blank cell, not a word
