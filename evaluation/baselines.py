"""Classical references beside the deep models: scikit-learn logistic regressions on the datalist.

- ``clinical``: the clinical and subtype vector exactly as the bundles encode it (Table 1 of Jing
  & Wang: the paper's clinical-and-subtype-only reference);
- ``ftv``: + log FTV at T0 and its log change at T1 (the I-SPY clinical standard for early
  prediction);
- ``ftv_t2``: + the log change at T2 (the late-information classical reference);
- ``rhpc``: the MRP models' tabular inputs (Gao et al.): age and every rhpc variable one-hot, a
  blank value (``unknown``) its own level, as the rhpc network embeds them (``mrp_fusion``'s
  ``scripts/rhpc.py``): the simplest credible alternative beside the MRP networks.

The encoding is the bundles' own (``scripts/data.py`` of ``pcr_teacher``, ``scripts/rhpc.py`` of
``mrp_fusion``, built from the fields the cohort's datalist records), so a regression and a network
see the same fields. Age and the FTV features are z-scored inside the pipeline (a missing age
takes the training mean), so the imputation and scaling are fitted on the training folds only.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .methods import BUNDLES, MRP, TEACHER

# FTV offset before the logarithm: 0.1 mL, the smallest tumour component prepare keeps, so a
# complete responder's FTV of 0 has a finite log
FTV_OFFSET_ML = 0.1
FEATURE_SETS = {"clinical": (), "ftv": ("T0", "T1"), "ftv_t2": ("T0", "T1", "T2")}  # FTV visits; "rhpc": rhpc_table
CODES = ("clinical_", "rhpc_")  # prefixes of the 0/1 code columns (the clinical age column aside)


def _bundle_module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def bundle_data():
    """The bundles' ``scripts/data.py`` (clinical encoding), loaded from its file."""
    return _bundle_module("pcr_bundle_data", BUNDLES / TEACHER / "scripts" / "data.py")


@cache
def mrp_rhpc():
    """``mrp_fusion``'s ``scripts/rhpc.py`` (the rhpc encoding), loaded from its file."""
    return _bundle_module("mrp_bundle_rhpc", BUNDLES / MRP / "scripts" / "rhpc.py")


def rhpc_table(entries: list[dict], clinical_fields: list[dict]) -> pd.DataFrame:
    """One row per datalist entry (index ``id``): ``age`` (NaN when missing), then one 0/1 column
    ``rhpc_<variable>=<level>`` per level of every rhpc variable."""
    encoding = mrp_rhpc().RhpcEncoding(clinical_fields)
    rows = []
    for entry in entries:
        coded = encoding.encode(entry["id"], entry.get("clinical") or {})
        row = {"age": float(coded["age"][0])}
        for field, chosen in zip(encoding.fields, coded["rhpc_index"]):
            row.update({f"rhpc_{field['name']}={level}": float(i == chosen) for i, level in enumerate(field["levels"])})
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([e["id"] for e in entries], name="id"))


def feature_table(entries: list[dict], clinical_fields: list[dict], features: str) -> pd.DataFrame:
    """One row per datalist entry (index ``id``): encoded clinical vector, then the FTV features;
    for ``rhpc``, the rhpc variables (``rhpc_table``)."""
    if features == "rhpc":
        return rhpc_table(entries, clinical_fields)
    encoding = bundle_data().ClinicalEncoding(clinical_fields)
    visits = FEATURE_SETS[features]
    rows = []
    for entry in entries:
        vector = encoding.encode(entry["id"], entry.get("clinical") or {})
        row = {f"clinical_{i}": float(v) for i, v in enumerate(vector)}
        if visits:
            ftv = entry.get("ftv_ml") or {}
            missing = [v for v in visits if ftv.get(v) is None]
            if missing:
                raise ValueError(f"patient {entry['id']}: no FTV for visit(s) {', '.join(missing)} in datalist.json")
            log_ftv = {v: np.log(float(ftv[v]) + FTV_OFFSET_ML) for v in visits}
            row["log_ftv_T0"] = log_ftv[visits[0]]
            for visit in visits[1:]:
                row[f"log_ftv_change_{visit}"] = log_ftv[visit] - log_ftv[visits[0]]
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([e["id"] for e in entries], name="id"))


def pipeline(table: pd.DataFrame, age_index: int) -> Pipeline:
    """Age and the image features z-scored (a missing value imputed by the mean), the 0/1 codes as
    they are; then a logistic regression."""
    scaled = [c for c in table if c == f"clinical_{age_index}" or not c.startswith(CODES)]
    encode = ColumnTransformer([("scaled", make_pipeline(SimpleImputer(), StandardScaler()), scaled)],
                               remainder="passthrough")
    return Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=1000))])


def fit_predict(entries: list[dict], clinical_fields: list[dict], features: str, train_folds: list[int],
                folds: list[int]) -> pd.DataFrame:
    """``id, probability, label`` of the patients in ``folds`` from a regression fitted on ``train_folds``."""
    table = feature_table(entries, clinical_fields, features)
    fold = pd.Series([e["fold"] for e in entries], index=table.index)
    label = pd.Series([e["label"] for e in entries], index=table.index)
    train = fold.isin(train_folds)
    if label[train].nunique() < 2:
        raise ValueError(f"training folds {train_folds} hold one class only")
    model = pipeline(table, bundle_data().ClinicalEncoding(clinical_fields).age_index).fit(table[train], label[train])
    chosen = fold.isin(folds)
    return pd.DataFrame({"id": table.index[chosen], "probability": model.predict_proba(table[chosen])[:, 1],
                         "label": label[chosen].to_numpy()})
