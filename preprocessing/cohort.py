"""Generative model of a synthetic I-SPY2-like cohort: clinical table, latent response, oracle.

The latent response of a patient is Gaussian given the clinical data,
``r = mu(clinical) + e`` with ``e ~ N(0, 1)``, and ``pCR = 1[r > 0]``. Each image quantity the
phantom renders is a linear-Gaussian observation of ``r``:

* T0: log baseline tumour enhancement  ``y0 = A0 + B0 r + n0``, B0 > 0 (vascular tumours respond better)
* T1: log tumour-volume ratio T1/T0    ``y1 = A1 + B1 r + n1``, B1 < 0 (responders shrink by week 3)
* T2: log volume ratio T2/T1           ``y2 = A2 + B2 r + n2``, B2 < 0 (further shrinkage by week 12)
* T3: log volume ratio T3/T2           ``y3 = A3 + B3 r + n3``, B3 < 0 (pre-surgery; in no oracle)

with independent ``n_k ~ N(0, S_k^2)``. The posterior of ``r`` given the clinical data and any
subset of the ``y_k`` is therefore Gaussian in closed form, and so is P(pCR | ...): these are the
oracle probabilities written to ``truth.csv``. Conditioning on more visits can only sharpen the
posterior, so T0-T2 is more informative than T0-T1, which is more informative than T0 alone.

The rhpc variables of the MRP fusion model (Gao et al., Table 2: radiological, histopathological,
personal, clinical) and one mammographic quantity are drawn afterwards from a stream of their own,
so every other column and every DICOM file of a seed is what it was without them:

* ``y_MG``: margin score of the mass on the pre-treatment mammogram, ``y_MG = A_MG + B_MG r + n_MG``
  (standard-normal scale; > 0 circumscribed, < 0 spiculated: spiculated, luminal-looking masses
  respond worse). A mammogram renderer draws the mass with spicules that grow as ``y_MG`` falls.
* focality, breast density, histology, differentiation, in situ component, cT, cN, cM: drawn given
  ``r`` (and receptor subtype or age): ``P(level | r) = softmax(log p + slope * r)``, so pCR is
  associated with them as in the paper without changing ``mu``, ``r`` or pCR.
* tumour location and laterality (unrelated to pCR in the paper), molecular subtype (from HR, HER2
  and Ki-67), menopausal status (from age), gene mutations and therapy flags (from subtype, age,
  arm): given the clinical data, independent of ``r``.

Values go missing at rates that differ by variable and site (one site does no gene testing; genes
are tested mostly in the young and in triple-negative disease), never depending on ``r``, so an
unknown value carries no likelihood. The oracle P(pCR | clinical, rhpc [, y_MG] [, MRI]) is then
the Gaussian posterior of ``r`` times the likelihood of the observed response-linked variables,
integrated over ``r`` by Gauss-Legendre quadrature to machine precision (``rhpc_oracle``), with
the MRI quantities of T0-T2 (the mid-treatment information) or of T0 alone (pre-treatment, the
``_t0`` columns): ``RHPC_ORACLES``. Oracles are functions of values already drawn and draw no
random number, so adding one changes no other column.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import log_softmax
from scipy.stats import norm

AGENTS = (
    "ABT 888", "AMG 386", "Carboplatin", "Ganetespib", "Ganitumab", "MK-2206",
    "Neratinib", "Paclitaxel", "Pembrolizumab", "Pertuzumab", "T-DM1", "Trastuzumab",
)
RACES = (
    "American Indian or Alaska Native", "Asian", "Black or African American",
    "Native Hawaiian or Other Pacific Islander", "White",
)
RACE_P = np.array([3, 41, 73, 3, 504]) / 624  # Table 1 of Jing & Wang
ETHNICITIES = ("Hispanic or Latino", "Not Hispanic or Latino")
BLUEPRINT = ("Basal", "HER2", "Luminal")

# Receptor subtypes (HR, HER2): proportions chosen so HR+ = 54 % and HER2+ = 24 % as in Table 1.
RECEPTOR_SUBTYPES = ((0, 0), (0, 1), (1, 1), (1, 0))  # TNBC, HR-/HER2+, HR+/HER2+, HR+/HER2-
RECEPTOR_P = np.array([0.36, 0.10, 0.14, 0.40])
# P(BluePrint | receptor subtype): basal 50 %, HER2-type 16 %, luminal 34 % overall.
BLUEPRINT_P = np.array([
    [0.92, 0.03, 0.05],
    [0.15, 0.80, 0.05],
    [0.15, 0.45, 0.40],
    [0.33, 0.02, 0.65],
])
# Probit-scale baseline response per receptor subtype (I-SPY2: HR-/HER2+ highest, HR+/HER2- lowest).
SUBTYPE_MU = np.array([-0.55, 0.25, -0.60, -1.45])

# Treatment arms: (name, agents, HER2 eligibility: None = any).  Trastuzumab joins AMG 386 and
# MK-2206 for HER2+ patients, as in the trial.
ARMS = (
    ("control", ("Paclitaxel",), None),
    ("veliparib-carboplatin", ("ABT 888", "Carboplatin", "Paclitaxel"), 0),
    ("amg386", ("AMG 386", "Paclitaxel"), None),
    ("ganetespib", ("Ganetespib", "Paclitaxel"), 0),
    ("ganitumab", ("Ganitumab", "Paclitaxel"), 0),
    ("mk2206", ("MK-2206", "Paclitaxel"), None),
    ("neratinib", ("Neratinib", "Paclitaxel"), None),
    ("pembrolizumab", ("Pembrolizumab", "Paclitaxel"), 0),
    ("tdm1-pertuzumab", ("T-DM1", "Pertuzumab"), 1),
    ("pertuzumab-trastuzumab", ("Pertuzumab", "Trastuzumab", "Paclitaxel"), 1),
)

# Observation model of the image quantities (see module docstring).
OBS_A = np.array([np.log(1.6), -0.15, -0.70, -0.50])
OBS_B = np.array([0.08, -0.18, -0.36, -0.40])
OBS_S = np.array([0.22, 0.30, 0.42, 0.30])
VISITS = ("T0", "T1", "T2", "T3")
VISIT_WEEKS = (0, 3, 12, 20)
ORACLE_VISITS = {"p_clinical": 0, "p_t0": 1, "p_t0_t1": 2, "p_t0_t2": 3}

# Mammographic margin score y_MG (module docstring): about as informative as the week-3 MRI.
MG_A, MG_B, MG_S = 0.25, 0.5, 0.8
# rhpc oracles: (MRI visits, with the mammogram). The MRI ones use T0-T2 (the mid-treatment
# information), the _t0 ones T0 alone (pre-treatment); added last, so earlier columns keep their place
RHPC_ORACLES = {"p_rhpc": (0, False), "p_rhpc_mg": (0, True), "p_rhpc_mri": (3, False),
                "p_rhpc_mg_mri": (3, True), "p_rhpc_mri_t0": (1, False), "p_rhpc_mg_mri_t0": (1, True)}
IMAGED = ("laterality", "tumour_location", "breast_density", "focality")  # what a mammogram shows
RHPC_COLUMNS = (
    "tumour_location", "laterality", "focality", "breast_density",
    "molecular_subtype", "histology", "differentiation", "in_situ_component",
    "menopausal_status", "brca1", "brca2", "chek2", "tp53",
    "cT", "cN", "cM", "chemotherapy", "hormonal_therapy", "immunotherapy",
)
# ICD-O codes and their frequencies in Table 2 of Gao et al. (C50.4, upper-outer quadrant, most common)
LOCATIONS = ("C50.0", "C50.1", "C50.2", "C50.3", "C50.4", "C50.5", "C50.6", "C50.8", "C50.9")
LOCATION_P = np.array([2, 139, 316, 121, 659, 128, 9, 23, 7]) / 1404
GENES = ("brca1", "brca2", "chek2", "tp53")
# P(carrier | tested) per receptor subtype (TNBC, HR-/HER2+, HR+/HER2+, HR+/HER2-): BRCA1 mostly TNBC
CARRIER_P = np.array([[0.15, 0.03, 0.02, 0.03],
                      [0.03, 0.02, 0.03, 0.05],
                      [0.01, 0.02, 0.02, 0.03],
                      [0.005, 0.01, 0.005, 0.005]])
# Share of unknown values (Table 2), varied per site; gene status is unknown unless tested.
MISSING = {"tumour_location": 0.002, "laterality": 0.002, "focality": 0.06, "breast_density": 0.03,
           "molecular_subtype": 0.002, "histology": 0.003, "differentiation": 0.08,
           "in_situ_component": 0.006, "menopausal_status": 0.002, "cT": 0.012, "cN": 0.013,
           "cM": 0.005, "chemotherapy": 0.002, "hormonal_therapy": 0.002, "immunotherapy": 0.002}
NO_GENE_TESTING_SITE = 1  # index of the site that records no gene mutations (S02)


class Linked(NamedTuple):
    """An rhpc variable drawn given the latent response: ``P(level | r, subtype, age) =
    softmax(log p[subtype] + slope * r + age_slope * (age - 49))``."""

    levels: tuple[str, ...]
    p: list  # level probabilities at r = 0 (and age 49): one row, or one per receptor subtype
    slope: tuple[float, ...]  # log-odds per unit of r: the direction and size of the pCR association
    age_slope: tuple[float, ...] | float = 0.0


# Slopes sized so that the pCR odds ratios on a large cohort are those of Gao et al. (tests/test_rhpc.py).
LINKED = {
    "focality": Linked(("unifocal", "multifocal", "satellite"), [0.56, 0.03, 0.41], (0.0, -1.0, -0.3)),
    # dense breasts: younger women; OR ~1.05 for pCR (not significant in the paper)
    "breast_density": Linked(("A", "B", "C", "D"), [0.10, 0.40, 0.38, 0.12], (0.0, 0.0, 0.02, 0.02),
                             (0.05, 0.02, -0.02, -0.05)),
    # lobular carcinoma: mostly HR+/HER2-, poor response
    "histology": Linked(("ductal", "lobular", "other"),
                        [[0.95, 0.01, 0.04], [0.96, 0.02, 0.02], [0.93, 0.05, 0.02], [0.80, 0.17, 0.03]],
                        (0.0, -0.5, 0.0)),
    # poorly differentiated (high grade) tumours respond better
    "differentiation": Linked(("well", "moderate", "poor"),
                              [[0.01, 0.20, 0.79], [0.02, 0.40, 0.58], [0.03, 0.50, 0.47], [0.08, 0.60, 0.32]],
                              (-0.4, 0.0, 0.4)),
    # an in situ component next to the invasive tumour: poorer response (OR ~0.5), more common in HER2+
    "in_situ_component": Linked(("yes", "no"), [[0.30, 0.70], [0.55, 0.45], [0.50, 0.50], [0.40, 0.60]],
                                (-0.4, 0.0)),
    "cT": Linked(("T1", "T2", "T3", "T4"), [0.22, 0.58, 0.17, 0.03], (0.25, 0.0, -0.3, -0.3)),
    "cN": Linked(("N0", "N1", "N2", "N3"), [0.40, 0.46, 0.01, 0.13], (0.3, 0.0, 0.0, 0.0)),
    "cM": Linked(("M0", "M1"), [0.96, 0.04], (0.0, -0.4)),
}


def agent_column(agent: str) -> str:
    """Clinical-table column of an agent's multi-hot flag, e.g. ``T-DM1`` -> ``agent_tdm1``."""
    return "agent_" + re.sub(r"[^a-z0-9]", "", agent.lower())


def _arm_effect(arm: str, hr: int, her2: int, mp: int, drd: int, immune: int) -> float:
    """Probit-scale treatment effect of an arm for one patient (I-SPY2-like graduations)."""
    effect = {
        "veliparib-carboplatin": 0.35 + 0.35 * drd * (1 - hr),
        "pembrolizumab": 0.45 + 0.40 * immune,
        "neratinib": 0.40 * her2 * (1 - hr),
        "tdm1-pertuzumab": 0.35,
        "pertuzumab-trastuzumab": 0.30,
        "mk2206": 0.20 * (1 - hr),
        "ganetespib": 0.10 * (1 - hr),
        "amg386": 0.10,
    }.get(arm, 0.0)
    return effect + 0.30 * mp * hr * (1 - her2)  # MammaPrint high-2 HR+ tumours respond more


def sample_sites(n_sites: int, rng: np.random.Generator) -> list[dict]:
    """Per-site case mix: receptor-subtype proportions perturbed around the trial marginals."""
    return [{"site": f"S{k + 1:02d}", "receptor_p": rng.dirichlet(RECEPTOR_P * 25)}
            for k in range(n_sites)]


def sample_clinical(n: int, sites: list[dict], rng: np.random.Generator) -> pd.DataFrame:
    """Clinical table (one row per patient) plus the probit mean ``mu`` of the latent response."""
    rows = []
    site_of = rng.integers(0, len(sites), size=n)
    for i in range(n):
        site = sites[site_of[i]]
        subtype = rng.choice(4, p=site["receptor_p"])
        hr, her2 = RECEPTOR_SUBTYPES[subtype]
        blueprint = BLUEPRINT[rng.choice(3, p=BLUEPRINT_P[subtype])]
        basal = blueprint == "Basal"
        mp = int(rng.random() < (0.70 if basal else 0.25))
        drd = int(rng.random() < (0.62 if basal else 0.15))
        immune = int(rng.random() < (0.60 if basal else 0.33))
        er = int(hr and rng.random() < 0.93)
        pr = int(hr and (not er or rng.random() < 0.70))
        ki67 = float(np.clip(rng.normal(45 if basal else 30 if her2 else 18, 12), 1, 95))
        eligible = [a for a in ARMS if a[2] is None or a[2] == her2]
        arm, agents, _ = eligible[rng.integers(len(eligible))]
        agents = set(agents)
        if her2 and arm in ("amg386", "mk2206", "control"):
            agents.add("Trastuzumab")
        age = float(np.clip(round(rng.normal(49, 10.5)), 24, 73))
        mu = (SUBTYPE_MU[subtype] + _arm_effect(arm, hr, her2, mp, drd, immune)
              + 0.25 * immune - 0.01 * (age - 49))
        rows.append({
            "id": f"ISPY{100001 + i}", "site": site["site"], "arm": arm,
            **{agent_column(a): int(a in agents) for a in AGENTS},
            "age": age,
            "race": RACES[rng.choice(len(RACES), p=RACE_P)],
            "ethnicity": ETHNICITIES[int(rng.random() >= 84 / 624)],
            "HR": hr, "HER2": her2, "MammaPrint": mp, "DRD": drd, "immune": immune,
            "BluePrint": blueprint, "ER": er, "PR": pr, "Ki67": round(ki67, 1), "mu": mu,
        })
    return pd.DataFrame(rows)


def sample_response(mu: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Latent response ``r`` and image quantities ``y`` (n x 4, visits T0..T3)."""
    r = mu + rng.standard_normal(mu.shape)
    y = OBS_A + r[:, None] * OBS_B + rng.standard_normal((len(mu), 4)) * OBS_S
    return r, y


def _gaussian_posterior(mu: np.ndarray, y: np.ndarray, a, b, s) -> tuple[np.ndarray, float]:
    """Mean and precision of ``r`` given ``N(mu, 1)`` and observations ``y = a + b r + N(0, s^2)``."""
    precision = 1.0 + np.sum(b**2 / s**2)
    mean = (mu + ((y - a) * b / s**2).sum(axis=1)) / precision
    return mean, precision


def oracle_probability(mu: np.ndarray, y: np.ndarray, n_visits: int) -> np.ndarray:
    """Exact P(pCR | clinical, image quantities of the first ``n_visits`` visits)."""
    mean, precision = _gaussian_posterior(mu, y[:, :n_visits], OBS_A[:n_visits], OBS_B[:n_visits],
                                          OBS_S[:n_visits])
    return norm.cdf(mean * np.sqrt(precision))


def receptor_subtype(clinical: pd.DataFrame) -> np.ndarray:
    """Index into ``RECEPTOR_SUBTYPES`` of each patient."""
    hr, her2 = clinical["HR"].to_numpy(), clinical["HER2"].to_numpy()
    return np.where(hr == 1, 3 - her2, her2)


def _linked_log_p(spec: Linked, r: np.ndarray, subtype: np.ndarray, age: np.ndarray) -> np.ndarray:
    """log P(level | r) of a response-linked variable at ``r`` (n, m): (n, m, levels)."""
    p = np.broadcast_to(np.asarray(spec.p, dtype=float), (len(RECEPTOR_SUBTYPES), len(spec.levels)))
    logits = (np.log(p[subtype])[:, None] + r[..., None] * np.asarray(spec.slope)
              + (age - 49)[:, None, None] * np.asarray(spec.age_slope))
    return log_softmax(logits, axis=-1)


def _draw(p: np.ndarray, levels, rng: np.random.Generator) -> np.ndarray:
    """One level per row of probabilities ``p`` (n, levels)."""
    return np.asarray(levels, dtype=object)[(p.cumsum(axis=1)[:, :-1] < rng.random((len(p), 1))).sum(axis=1)]


def sample_rhpc(clinical: pd.DataFrame, r: np.ndarray, sites: list[dict],
                rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rhpc columns (None = unknown) of the patients in ``clinical`` given their response
    ``r``, and the true values of the ones a mammogram shows (``IMAGED``: a tumour has a side and
    a location whether or not the table records them)."""
    n, subtype, age = len(clinical), receptor_subtype(clinical), clinical["age"].to_numpy()
    values = {
        "tumour_location": _draw(np.tile(LOCATION_P, (n, 1)), LOCATIONS, rng),
        "laterality": np.where(rng.random(n) < 0.51, "left", "right"),
        # St Gallen 2013: HR+/HER2- with Ki-67 >= 20 % is luminal B
        "molecular_subtype": np.select(
            [subtype == 0, subtype == 1, subtype == 2, clinical["Ki67"].to_numpy() >= 20],
            ["triple negative", "HER2-enriched", "triple positive", "luminal B"], "luminal A"),
        # natural menopause between 40 and 58
        "menopausal_status": np.where(age >= np.clip(rng.normal(51, 3.5, n), 40, 58), "post", "pre"),
        "chemotherapy": np.where(clinical["agent_paclitaxel"] | clinical["agent_carboplatin"], "yes", "no"),
        # neoadjuvant endocrine therapy for some HR+ patients, mostly HER2-
        "hormonal_therapy": np.where(rng.random(n) < np.array([0, 0, 0.04, 0.12])[subtype], "yes", "no"),
        "immunotherapy": np.where(clinical["agent_pembrolizumab"] == 1, "yes", "no"),
    }
    for name, spec in LINKED.items():
        values[name] = _draw(np.exp(_linked_log_p(spec, r[:, None], subtype, age)[:, 0]), spec.levels, rng)
    for gene, p in zip(GENES, CARRIER_P):
        values[gene] = np.where(rng.random(n) < p[subtype], "carrier", "non-carrier")
    table = pd.DataFrame(values, index=clinical.index)[list(RHPC_COLUMNS)].astype(object)
    imaged = table[list(IMAGED)].copy()

    site = pd.Index([s["site"] for s in sites]).get_indexer(clinical["site"])
    site_factor = rng.lognormal(0.0, 0.5, size=(len(sites), len(MISSING) + 1))
    for k, (name, rate) in enumerate(MISSING.items()):
        table.loc[rng.random(n) < rate * site_factor[site, k], name] = None
    # genes are tested in the young and in triple-negative disease, not at all at one site
    tested = rng.random(n) < (0.04 + 0.25 * (age < 40) + 0.10 * (subtype == 0)) * site_factor[site, -1]
    table.loc[~tested | (site == NO_GENE_TESTING_SITE), list(GENES)] = None
    return table, imaged


def rhpc_log_likelihood(clinical: pd.DataFrame, r: np.ndarray) -> np.ndarray:
    """log P(observed response-linked rhpc values | r) at ``r`` (n, m); unknown values add nothing.
    The other rhpc variables and the missingness do not depend on ``r`` given the clinical data."""
    subtype, age = receptor_subtype(clinical), clinical["age"].to_numpy()
    total = np.zeros(r.shape)
    for name, spec in LINKED.items():
        code = pd.Categorical(clinical[name], categories=spec.levels).codes  # -1: unknown
        log_p = np.take_along_axis(_linked_log_p(spec, r, subtype, age), np.maximum(code, 0)[:, None, None], -1)
        total += np.where(code[:, None] >= 0, log_p[..., 0], 0.0)
    return total


def rhpc_oracle(clinical: pd.DataFrame, mu: np.ndarray, y: np.ndarray, n_visits: int,
                y_mg: np.ndarray | None = None, nodes: int = 32, z_max: float = 10.0) -> np.ndarray:
    """Exact P(pCR | clinical, rhpc, MRI quantities of the first ``n_visits`` visits [, ``y_mg``])."""
    a, b, s, obs = OBS_A[:n_visits], OBS_B[:n_visits], OBS_S[:n_visits], y[:, :n_visits]
    if y_mg is not None:
        a, b, s = np.append(a, MG_A), np.append(b, MG_B), np.append(s, MG_S)
        obs = np.column_stack([obs, y_mg])
    mean, precision = _gaussian_posterior(mu, obs, a, b, s)
    sd = 1.0 / np.sqrt(precision)
    # The posterior is N(mean, sd^2) times the rhpc likelihood, a smooth function of r: Gauss-Legendre
    # in z = (r - mean) / sd on [-z_max, z_max], split where r = 0 so the pCR indicator is no
    # discontinuity; with no rhpc value known this is norm.cdf(mean / sd) to machine precision.
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = (x + 1) / 2, w / 2
    split = np.clip(-mean / sd, -z_max, z_max)[:, None]
    z = np.concatenate([-z_max + (split + z_max) * x, split + (z_max - split) * x], axis=1)
    log_w = np.log(np.concatenate([(split + z_max) * w, (z_max - split) * w], axis=1) + 1e-300)
    log_mass = log_w + norm.logpdf(z) + rhpc_log_likelihood(clinical, mean[:, None] + sd * z)
    mass = np.exp(log_mass - log_mass.max(axis=1, keepdims=True))
    return mass[:, nodes:].sum(axis=1) / mass.sum(axis=1)


def sample_cohort(n: int, n_sites: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Clinical table (with pCR, then the rhpc variables) and truth table (latent response, image
    quantities, oracles)."""
    rng = np.random.default_rng(seed)
    sites = sample_sites(n_sites, rng)
    clinical = sample_clinical(n, sites, rng)
    mu = clinical.pop("mu").to_numpy()
    r, y = sample_response(mu, rng)
    clinical["pCR"] = (r > 0).astype(int)
    truth = pd.DataFrame({"id": clinical["id"], "latent_response": r})
    for k, visit in enumerate(VISITS):
        truth[f"y_{visit}"] = y[:, k]
    for name, n_visits in ORACLE_VISITS.items():
        truth[name] = oracle_probability(mu, y, n_visits)
    rng = np.random.default_rng([seed, 3])  # a stream of its own: the columns above stay as they were
    rhpc, imaged = sample_rhpc(clinical, r, sites, rng)
    clinical = pd.concat([clinical, rhpc], axis=1)
    truth["y_MG"] = MG_A + MG_B * r + MG_S * rng.standard_normal(n)
    for name, (n_visits, mammogram) in RHPC_ORACLES.items():
        truth[name] = rhpc_oracle(clinical, mu, y, n_visits, truth["y_MG"].to_numpy() if mammogram else None)
    for column in IMAGED:  # what the mammogram renderer draws, blank in the table or not
        truth[f"true_{column}"] = imaged[column].to_numpy()
    return clinical, truth, sites
