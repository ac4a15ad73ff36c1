"""How close a model fitted to this cohort can come to the oracle (synthetic cohorts only).

The report's oracle rows are the generator's exact P(pCR | information): they know how every
clinical field acts. A model fitted to a few hundred patients must learn that too, and reads the
image quantities with error. This diagnostic separates the two costs. In the cohort's outer folds
(each fold predicted by a regression fitted to the other folds), it fits the classical references'
logistic regression (``baselines.pipeline``) to

- the measured FTV features (``ftv``: log FTV at T0 and its log changes), and
- the generator's exact image quantities from ``truth.csv`` (``exact``: ``y_T0``, the log
  baseline enhancement, and ``y_T1``/``y_T2``, the log volume ratios),

each with and without the clinical vector. An exact-quantity regression's gap to the oracle is
the cost of learning from this many patients; the gap between the FTV and exact-quantity
regressions is what a better image read-out can gain.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .baselines import bundle_data, feature_table, pipeline
from .metrics import auroc, bootstrap_ci

# name -> (visits of the image quantities, with the clinical vector, measured FTV or exact quantities)
FEATURE_SETS = {
    "clinical": ((), True, None),
    "ftv_t0_t1": (("T0", "T1"), True, "ftv"),
    "ftv_t0_t1 (no clinical)": (("T0", "T1"), False, "ftv"),
    "exact_t0_t1": (("T0", "T1"), True, "exact"),
    "exact_t0_t1 (no clinical)": (("T0", "T1"), False, "exact"),
    "ftv_t0_t2": (("T0", "T1", "T2"), True, "ftv"),
    "exact_t0_t2": (("T0", "T1", "T2"), True, "exact"),
}
ORACLES = ("p_clinical", "p_t0_t1", "p_t0_t2")


def _columns(table: pd.DataFrame, visits: tuple[str, ...], clinical: bool, source: str | None) -> list[str]:
    columns = [c for c in table if c.startswith("clinical_")] if clinical else []
    if source == "ftv":
        columns += ["log_ftv_T0"] + [f"log_ftv_change_{v}" for v in visits[1:]]
    elif source == "exact":
        columns += [f"y_{v}" for v in visits]
    return columns


def out_of_fold(table: pd.DataFrame, columns: list[str], label: np.ndarray, fold: np.ndarray,
                age_index: int) -> np.ndarray:
    """Each fold's probabilities from a regression fitted to the other folds."""
    probability = np.empty(len(table))
    for test in np.unique(fold):
        train = fold != test
        model = pipeline(table[columns], age_index).fit(table.loc[train, columns], label[train])
        probability[~train] = model.predict_proba(table.loc[~train, columns])[:, 1]
    return probability


def ceiling_table(data: Path, truth: Path, n_resamples: int = 1000) -> pd.DataFrame:
    """``row, inputs, AUROC, low, high`` for the regressions of ``FEATURE_SETS`` and the oracles."""
    entries = json.loads((data / "datalist.json").read_text())["training"]
    fields = bundle_data().cohort_fields(str(data))  # the bundles' check: a cohort without its encoding is refused
    table = feature_table(entries, fields, "ftv_t2")
    exact = pd.read_csv(truth, dtype={"id": str}).set_index("id")
    missing = table.index.difference(exact.index)
    if len(missing):
        raise ValueError(f"{truth}: no row for patient {missing[0]} (and {len(missing) - 1} more)")
    exact = exact.loc[table.index]
    for visit in ("T0", "T1", "T2"):
        table[f"y_{visit}"] = exact[f"y_{visit}"].to_numpy()
    label = np.array([e["label"] for e in entries])
    fold = np.array([e["fold"] for e in entries])
    age_index = bundle_data().ClinicalEncoding(fields).age_index
    rows = []
    for name, (visits, clinical, source) in FEATURE_SETS.items():
        columns = _columns(table, visits, clinical, source)
        score = out_of_fold(table, columns, label, fold, age_index)
        rows.append((f"regression {name}", ", ".join(c for c in columns if not c.startswith("clinical_"))
                     + (" + clinical vector" if clinical else ""), *bootstrap_ci(auroc, label, score,
                                                                                 n_resamples=n_resamples)))
    for name in ORACLES:
        rows.append((f"oracle {name}", "generator's exact P(pCR | information)",
                     *bootstrap_ci(auroc, label, exact[name].to_numpy(), n_resamples=n_resamples)))
    return pd.DataFrame(rows, columns=["row", "inputs", "AUROC", "low", "high"])
