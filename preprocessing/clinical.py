"""Read and validate ``clinical.csv`` (I-SPY2 style, Table 1 of Jing & Wang).

Values stay raw: encoding (one-hot, z-scores) happens inside the bundles, so its statistics come
from training folds only. Rows with a missing or unknown value in a model field, duplicate ids or
no label are excluded with a reason; columns not listed here never reach the outputs (a hospital
table may hold names or record numbers).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from .cohort import AGENTS, BINARY_FIELDS, CATEGORICAL_FIELDS, agent_column

AGENT_COLUMNS = tuple(agent_column(a) for a in AGENTS)
MODEL_FIELDS = AGENT_COLUMNS + ("age",) + tuple(CATEGORICAL_FIELDS) + ("HR", "HER2", "MammaPrint", "DRD", "immune")
OPTIONAL_FIELDS = ("site", "arm", "ER", "PR", "Ki67")
LABEL = "pCR"


class ClinicalTableError(ValueError):
    """The table as a whole cannot be used (fatal)."""


def pseudonym(study_id: str, salt: str) -> str:
    return "P" + hashlib.sha256(f"{salt}:{study_id}".encode()).hexdigest()[:12]


def _problem(row: pd.Series) -> str | None:
    """Reason a row cannot be used, or None."""
    for field in MODEL_FIELDS + (LABEL,):
        value = row[field]
        if pd.isna(value) or (isinstance(value, str) and not value.strip()):
            return f"clinical field '{field}' is missing"
        if field in CATEGORICAL_FIELDS and value not in CATEGORICAL_FIELDS[field]:
            return f"clinical field '{field}' has unknown value '{value}'"
        if field in BINARY_FIELDS + AGENT_COLUMNS + (LABEL,) and str(value) not in ("0", "1", "0.0", "1.0"):
            return f"clinical field '{field}' must be 0 or 1, got '{value}'"
    try:
        age = float(row["age"])
    except ValueError:
        return f"clinical field 'age' is not a number: '{row['age']}'"
    if not 10 <= age <= 110:
        return f"clinical field 'age' out of range: {age}"
    if not any(int(float(row[c])) for c in AGENT_COLUMNS):
        return "no therapeutic agent marked"
    return None


def _clean(value):
    if pd.isna(value):
        return None
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_clinical(path: Path) -> tuple[dict[str, dict], list[dict], list[str]]:
    """Valid patients ``{id: {"label", "site", "clinical"}}``, exclusions and warnings."""
    path = Path(path)
    if not path.is_file():
        raise ClinicalTableError(f"clinical table not found: {path}")
    try:
        table = pd.read_csv(path, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ClinicalTableError(f"{path}: cannot be parsed as CSV ({err})".splitlines()[0]) from None
    missing = [c for c in ("id", LABEL) + MODEL_FIELDS if c not in table.columns]
    if missing:
        raise ClinicalTableError(f"{path}: missing column(s) {', '.join(missing)}")
    warnings = []
    ignored = [c for c in table.columns if c not in ("id", LABEL) + MODEL_FIELDS + OPTIONAL_FIELDS]
    if ignored:
        warnings.append(f"clinical.csv columns not used (never copied to outputs): {', '.join(ignored)}")
    table["id"] = table["id"].str.strip()
    exclusions, patients = [], {}
    counts = table["id"].value_counts()
    for number, row in table.iterrows():
        pid = row["id"]
        if pd.isna(pid) or not pid:
            exclusions.append({"id": "-", "visit": "-", "reason": f"clinical.csv row {number + 2}: missing id"})
            continue
        if counts[pid] > 1:
            exclusions.append({"id": pid, "visit": "-", "reason": f"duplicate id in clinical.csv ({counts[pid]} rows)"})
            continue
        problem = _problem(row)
        if problem:
            exclusions.append({"id": pid, "visit": "-", "reason": problem})
            continue
        fields = MODEL_FIELDS + tuple(c for c in OPTIONAL_FIELDS if c in table.columns and c != "site")
        patients[pid] = {
            "label": int(float(row[LABEL])),
            "site": _clean(row["site"]) if "site" in table.columns else None,
            "clinical": {f: _clean(row[f]) for f in fields},
        }
    return patients, exclusions, warnings
