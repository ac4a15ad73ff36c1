"""Summary of a prepared cohort: patients, sites, pCR rate, exclusions, median FTV, what each site
has of every modality (MRI visits, mammograms, rhpc variables) and, for a synthetic cohort, the
oracle AUROCs of its ``truth.csv``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from .agreement import truth_table
from .schema import UNKNOWN



def availability(datalist: dict) -> pd.DataFrame:
    """Per site (rows): patients, patients with each MRI visit, with mammograms, and the share of
    rhpc values known."""
    rhpc = [f["name"] for f in datalist.get("clinical_fields", []) if f["group"] == "rhpc"]
    mammography = any("mammograms" in e for e in datalist["training"])
    rows = []
    for e in datalist["training"]:
        row = {"site": e["site"], "patients": 1, **{f"MRI {v}": int(v in e["ftv_ml"]) for v in datalist["visits"]}}
        if mammography:
            row["mammograms"] = int(bool(e.get("mammograms")))
        if rhpc:
            row["rhpc known"] = sum(e["clinical"].get(f) not in (None, UNKNOWN) for f in rhpc) / len(rhpc)
        rows.append(row)
    table = pd.DataFrame(rows).groupby("site").agg(
        {c: ("mean" if c == "rhpc known" else "sum") for c in rows[0] if c != "site"})
    if "rhpc known" in table:
        table["rhpc known"] = (100 * table["rhpc known"]).round().astype(int).astype(str) + " %"
    return table


def oracle_aurocs(datalist: dict, truth: Path, salt: str | None = None) -> dict[str, float]:
    """AUROC of each oracle probability of ``truth.csv`` over the prepared patients."""
    table = truth_table(truth, datalist, salt)
    ids = [e["id"] for e in datalist["training"]]
    labels = [e["label"] for e in datalist["training"]]
    oracles = [c for c in table if c.startswith("p_")]  # the oracle probabilities, as synth names them
    return {p: round(float(roc_auc_score(labels, table.loc[ids, p])), 3) for p in oracles}


def summarize(prepared: Path, truth: Path | None = None, salt: str | None = None) -> dict:
    """The summary; with ``truth``, the oracle AUROCs (``salt``: the pseudonym key, if any)."""
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
        "availability": availability(datalist),
        "oracle_auroc": oracle_aurocs(datalist, truth, salt) if truth else {},
    }


def format_summary(s: dict) -> str:
    lines = [
        f"patients: {s['patients']}   pCR rate: {s['pcr_rate']:.1%}   sites: "
        + ", ".join(f"{k} ({n})" for k, n in s["sites"].items()),
        "folds: " + ", ".join(f"{k}: {n}" for k, n in s["folds"].items()),
        f"exclusions: {s['exclusions']} row(s), {s['excluded_patients']} patient(s) (exclusions.csv)",
        "median FTV (mL)   " + "   ".join(f"{v}: pCR {m.get('pCR', float('nan')):.2f} / non-pCR "
                                          f"{m.get('non-pCR', float('nan')):.2f}" for v, m in s["median_ftv_ml"].items()),
        "available by site:",
        s["availability"].to_string(),
    ]
    if s["oracle_auroc"]:
        lines.append("oracle AUROC (truth.csv): " + ", ".join(f"{k} {v:.3f}" for k, v in s["oracle_auroc"].items()))
    return "\n".join(lines)
