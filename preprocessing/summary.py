"""Summary of a prepared cohort: patients, sites, pCR rate, exclusions, median FTV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def summarize(prepared: Path) -> dict:
    prepared = Path(prepared)
    datalist = json.loads((prepared / "datalist.json").read_text())
    exclusions = pd.read_csv(prepared / "exclusions.csv", keep_default_na=False)
    entries = datalist["training"]
    labels = pd.Series([e["label"] for e in entries])
    ftv = pd.DataFrame([{"visit": v, "pCR": e["label"], "ftv_ml": ml}
                        for e in entries for v, ml in e["ftv_ml"].items()])
    median = ftv.groupby(["visit", "pCR"])["ftv_ml"].median().unstack("pCR")
    return {
        "patients": len(entries),
        "sites": dict(sorted(pd.Series([e["site"] for e in entries]).value_counts().items())),
        "pcr_rate": round(float(labels.mean()), 3),
        "folds": dict(sorted(pd.Series([e["fold"] for e in entries]).value_counts().items())),
        "exclusions": len(exclusions),
        "excluded_patients": int(exclusions.loc[exclusions["id"] != "-", "id"].nunique()),
        "median_ftv_ml": {v: {("pCR" if k == 1 else "non-pCR"): round(float(x), 2) for k, x in row.items()}
                          for v, row in median.iterrows()},
    }


def format_summary(s: dict) -> str:
    lines = [
        f"patients: {s['patients']}   pCR rate: {s['pcr_rate']:.1%}   sites: "
        + ", ".join(f"{k} ({n})" for k, n in s["sites"].items()),
        "folds: " + ", ".join(f"{k}: {n}" for k, n in s["folds"].items()),
        f"exclusions: {s['exclusions']} row(s), {s['excluded_patients']} patient(s) (exclusions.csv)",
        "median FTV (mL)   " + "   ".join(f"{v}: pCR {m.get('pCR', float('nan')):.2f} / non-pCR "
                                          f"{m.get('non-pCR', float('nan')):.2f}" for v, m in s["median_ftv_ml"].items()),
    ]
    return "\n".join(lines)
