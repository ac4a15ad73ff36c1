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
from .dicom_index import DicomRules, _patient_key
from .schema import PRESETS, preset

PRESETS_NAMES = {p.stem for p in PRESETS.glob("*.yaml")}

OFFSET_ML = 0.1


def truth_table(truth: Path, datalist: dict, salt: str | None = None) -> pd.DataFrame:
    """``truth.csv`` indexed by the datalist's ids: each truth id normalised by the cohort schema's
    patient pattern (``ISPY2-123456`` -> ``123456``), then pseudonymised with ``salt`` when the
    datalist is."""
    table = pd.read_csv(truth, dtype={"id": str})
    rules = DicomRules(patient_pattern=preset(datalist["schema"]).dicom.get("patient_pattern")
                       if datalist.get("schema") in PRESETS_NAMES else None)
    keys = [_patient_key(i, rules) or i for i in table["id"]]
    if datalist.get("pseudonymized"):
        if not salt:
            raise ValueError("the prepared cohort is pseudonymised: its pseudonym key is needed to match truth.csv")
        keys = [pseudonym(k, salt) for k in keys]
    table.index = keys
    missing = [e["id"] for e in datalist["training"] if e["id"] not in table.index]
    if missing:
        raise ValueError(f"{truth}: no row for {len(missing)} prepared patient(s), e.g. {missing[0]}")
    return table


def ftv_agreement(prepared: Path, truth: Path, column: str = "tumour_ml", salt: str | None = None) -> dict:
    """Patients prepared, visits compared, median |log ratio| and log correlation of FTV against
    ``truth``'s ``<column>_<visit>``; ``salt`` maps truth ids to the datalist's pseudonyms."""
    datalist = json.loads((Path(prepared) / "datalist.json").read_text())
    table = truth_table(truth, datalist, salt)
    pairs = np.array([(ml, table.loc[e["id"], f"{column}_{visit}"])
                      for e in datalist["training"] for visit, ml in e["ftv_ml"].items()], dtype=float)
    ftv, true = np.log(pairs + OFFSET_ML).T
    return {"patients": datalist["numTraining"], "cohort": len(table), "visits": len(pairs),
            "median_abs_log_ratio": float(np.median(np.abs(ftv - true))),
            "log_correlation": float(np.corrcoef(ftv, true)[0, 1])}


def format_agreement(a: dict) -> str:
    return (f"prepared {a['patients']}/{a['cohort']} patients, {a['visits']} visits: median |log FTV/true| "
            f"{a['median_abs_log_ratio']:.3f}, correlation of logs {a['log_correlation']:.3f}")
