"""Subgroup AUROCs and odds ratios of categorical clinical features for pCR.

Clinical values come from the prepared cohort's ``datalist.json`` (raw values; ids are already
pseudonyms). Binary receptor/genomic fields hold 1 = positive / high.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, norm

from .metrics import auroc, bootstrap_ci

SUBGROUP_FIELDS = ("HR", "HER2", "BluePrint", "site", "arm")
ODDS_RATIO_FIELDS = ("HR", "HER2", "ER", "PR", "MammaPrint", "BluePrint", "DRD", "immune", "arm", "site", "race",
                     "ethnicity")
BINARY_LEVELS = {0: "negative", 1: "positive"}
BINARY_NAMES = {"MammaPrint": {0: "low", 1: "high-2"}, "DRD": {0: "negative", 1: "positive"},
                "immune": {0: "negative", 1: "positive"}}


def clinical_table(data: Path) -> pd.DataFrame:
    """One row per patient of a prepared cohort: ``id``, ``site`` and the raw clinical fields,
    binary fields spelled out (``HR``: positive / negative, ...)."""
    path = Path(data) / "datalist.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (--data must be a prepared cohort)")
    rows = [{"id": e["id"], "site": e.get("site"), **e.get("clinical", {})} for e in json.loads(path.read_text())["training"]]
    table = pd.DataFrame(rows).astype({"id": str})
    for field in ("HR", "HER2", "ER", "PR", "MammaPrint", "DRD", "immune"):
        if field in table:
            table[field] = table[field].map(BINARY_NAMES.get(field, BINARY_LEVELS)).fillna(table[field])
    return table


def with_clinical(predictions: pd.DataFrame, clinical: pd.DataFrame) -> pd.DataFrame:
    """Predictions joined with clinical fields; every predicted patient must be in the cohort."""
    extra = clinical[["id"] + [c for c in clinical if c not in predictions]]
    merged = predictions.merge(extra, on="id", how="left", indicator=True)
    missing = merged.loc[merged["_merge"] == "left_only", "id"]
    if len(missing):
        raise ValueError(f"{len(missing)} predicted patient(s) not in the cohort's datalist, e.g. {missing.iloc[0]}")
    return merged.drop(columns="_merge")


def subgroup_auroc(frame: pd.DataFrame, fields=SUBGROUP_FIELDS, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """``field, level, patients, pcr, auroc, low, high`` per level of each field present in
    ``frame`` (columns ``label``, ``probability`` and the fields). A level holding one class has
    no AUROC (NaN)."""
    rows = []
    for field in (f for f in fields if f in frame):
        for level, group in frame.groupby(field, sort=True):
            row = {"field": field, "level": str(level), "patients": len(group), "pcr": int(group.label.sum())}
            if 0 < row["pcr"] < len(group):
                row["auroc"], row["low"], row["high"] = bootstrap_ci(auroc, group.label, group.probability,
                                                                    n_resamples=n_resamples, seed=seed)
            rows.append(row)
    return pd.DataFrame(rows, columns=["field", "level", "patients", "pcr", "auroc", "low", "high"])


def woolf_odds_ratio(table: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Sample odds ratio of a 2x2 table [[a, b], [c, d]] with Woolf's log-scale CI; with a zero
    cell, 0.5 is added to every cell (Haldane-Anscombe) so that both stay finite."""
    cells = table.astype(float) + (0.5 if (table == 0).any() else 0.0)
    log_or = np.log(cells[0, 0] * cells[1, 1] / (cells[0, 1] * cells[1, 0]))
    half = norm.ppf(0.5 + level / 2) * np.sqrt((1 / cells).sum())
    return {"odds_ratio": np.exp(log_or), "low": np.exp(log_or - half), "high": np.exp(log_or + half),
            "haldane": bool((table == 0).any())}


def odds_ratios(frame: pd.DataFrame, fields=ODDS_RATIO_FIELDS) -> pd.DataFrame:
    """Odds ratio of pCR for each level of each categorical field against the field's most
    common level (the MRP paper's comparator), with a 95 % CI (``woolf_odds_ratio``) and
    Fisher's exact p-value. One row per patient in ``frame`` (columns ``label`` and the fields)."""
    rows = []
    for field in (f for f in fields if f in frame):
        counts = frame[field].astype(str).value_counts()
        reference = min(counts.index, key=lambda level: (-counts[level], level))  # most common; ties by name
        ref = frame[field].astype(str) == reference
        ref_cells = [int(frame.label[ref].sum()), int((1 - frame.label[ref]).sum())]
        for level in sorted(set(counts.index) - {reference}):
            mask = frame[field].astype(str) == level
            table = np.array([[int(frame.label[mask].sum()), int((1 - frame.label[mask]).sum())], ref_cells])
            rows.append({"field": field, "level": level, "reference": reference, "patients": int(mask.sum()),
                         "pcr": table[0, 0], **woolf_odds_ratio(table), "p_value": fisher_exact(table).pvalue})
    return pd.DataFrame(rows, columns=["field", "level", "reference", "patients", "pcr", "odds_ratio", "low", "high",
                                       "haldane", "p_value"])
