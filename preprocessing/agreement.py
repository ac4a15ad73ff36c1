"""``python -m preprocessing agreement``: how closely a prepared cohort's FTV tracks the true
tumour volume of a synthetic cohort (``truth.csv`` of ``synth``, either layout).

Per visit, the error is |log((FTV + 0.1) / (true + 0.1))| (0.1 mL: the smallest tumour component
``prepare`` keeps); the figures are its median over all visits and the correlation of the logs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .clinical import pseudonym

OFFSET_ML = 0.1


def ftv_agreement(prepared: Path, truth: Path, column: str = "tumour_ml", salt: str | None = None) -> dict:
    """Patients prepared, visits compared, median |log ratio| and log correlation of FTV against
    ``truth``'s ``<column>_<visit>``; ``salt`` maps truth ids to the datalist's pseudonyms."""
    datalist = json.loads((Path(prepared) / "datalist.json").read_text())
    table = pd.read_csv(truth, dtype={"id": str})
    # the published layout's ids are ISPY2-<number>; the datalist keys patients by the number
    keys = [i.removeprefix("ISPY2-") for i in table["id"]]
    table.index = [pseudonym(k, salt) for k in keys] if datalist.get("pseudonymized") else keys
    pairs = np.array([(ml, table.loc[e["id"], f"{column}_{visit}"])
                      for e in datalist["training"] for visit, ml in e["ftv_ml"].items()], dtype=float)
    ftv, true = np.log(pairs + OFFSET_ML).T
    return {"patients": datalist["numTraining"], "cohort": len(table), "visits": len(pairs),
            "median_abs_log_ratio": float(np.median(np.abs(ftv - true))),
            "log_correlation": float(np.corrcoef(ftv, true)[0, 1])}


def format_agreement(a: dict) -> str:
    return (f"prepared {a['patients']}/{a['cohort']} patients, {a['visits']} visits: median |log FTV/true| "
            f"{a['median_abs_log_ratio']:.3f}, correlation of logs {a['log_correlation']:.3f}")
