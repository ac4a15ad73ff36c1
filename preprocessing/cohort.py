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
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
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


def agent_column(agent: str) -> str:
    """Clinical-table column of an agent's multi-hot flag, e.g. ``T-DM1`` -> ``agent_tdm1``."""
    return "agent_" + re.sub(r"[^a-z0-9]", "", agent.lower())


BINARY_FIELDS = ("HR", "HER2", "MammaPrint", "DRD", "immune", "ER", "PR")
CATEGORICAL_FIELDS = {"race": RACES, "ethnicity": ETHNICITIES, "BluePrint": BLUEPRINT}


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


def oracle_probability(mu: np.ndarray, y: np.ndarray, n_visits: int) -> np.ndarray:
    """Exact P(pCR | clinical, image quantities of the first ``n_visits`` visits)."""
    b, s = OBS_B[:n_visits], OBS_S[:n_visits]
    precision = 1.0 + np.sum(b**2 / s**2)
    mean = (mu + ((y[:, :n_visits] - OBS_A[:n_visits]) * b / s**2).sum(axis=1)) / precision
    return norm.cdf(mean * np.sqrt(precision))


def sample_cohort(n: int, n_sites: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """Clinical table (with pCR) and truth table (latent response, image quantities, oracles)."""
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
    return clinical, truth, sites
