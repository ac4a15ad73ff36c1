"""Read and validate the clinical table (CSV or Excel) through a cohort schema.

Values stay raw (levels by name, age in years): encoding (one-hot, z-scores) happens inside the
bundles, so its statistics come from training folds only. Rows with a missing or unknown value
in a required field, duplicate ids or no label are excluded with a reason; columns the schema
does not name never reach the outputs (a hospital table may hold names or record numbers).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from .schema import Schema, binary, cell


class ClinicalTableError(ValueError):
    """The table as a whole cannot be used (fatal)."""


def pseudonym(study_id: str, salt: str) -> str:
    return "P" + hashlib.sha256(f"{salt}:{study_id}".encode()).hexdigest()[:12]


def read_table(path: Path) -> pd.DataFrame:
    """Every cell as text or None: ``.xlsx``/``.xls`` through openpyxl/xlrd, anything else as CSV."""
    path = Path(path)
    if not path.is_file():
        raise ClinicalTableError(f"clinical table not found: {path}")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            table = pd.read_excel(path, dtype=object, keep_default_na=False)  # "NA" is text, as in a CSV
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as err:
        raise ClinicalTableError(f"{path}: cannot be read as a table ({type(err).__name__})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table.map(cell).astype(object)


def read_clinical(path: Path, schema: Schema) -> tuple[dict[str, dict], list[dict], list[str]]:
    """Valid patients ``{id: {"label", "site", "clinical"}}``, exclusions and warnings.

    Exclusion reasons name the row number and field, never a value of an unused column."""
    table = read_table(path)
    missing = [c for c in dict.fromkeys(schema.columns()) if c not in table.columns]
    if missing:
        raise ClinicalTableError(f"{path}: missing column(s) {', '.join(missing)} (schema {schema.name})")
    used = set(schema.columns()) | set(schema.extra.values())
    warnings = [f"{Path(path).name}: column {c} (extra of schema {schema.name}) is absent"
                for c in schema.extra.values() if c not in table.columns]
    ignored = [c for c in table.columns if c not in used]
    if ignored:
        warnings.append(f"{Path(path).name}: {len(ignored)} column(s) not in schema {schema.name} are not used "
                        "(never copied to outputs)")
    ids = [schema.patient_id(v) for v in table[schema.id_column]]
    counts = pd.Series([i for i in ids if i]).value_counts()
    exclusions, patients = [], {}
    for number, (pid, row) in enumerate(zip(ids, table.to_dict("records"))):
        if not pid:
            exclusions.append({"id": "-", "visit": "-", "reason": f"clinical table row {number + 2}: missing id"})
            continue
        if counts[pid] > 1:
            exclusions.append({"id": pid, "visit": "-", "reason": f"duplicate id in clinical table ({counts[pid]} rows)"})
            continue
        try:
            label = binary("label", row.get(schema.label_column), schema.label_column)
            values = {f.name: f.parse(row) for f in schema.fields}
        except ValueError as err:
            exclusions.append({"id": pid, "visit": "-", "reason": str(err)})
            continue
        values |= {name: _number_or_text(row.get(column)) for name, column in schema.extra.items()
                   if column in table.columns}
        site = cell(row.get(schema.site_column)) if schema.site_column else None
        patients[pid] = {"label": label, "site": site, "clinical": values}
    return patients, exclusions, warnings


def _number_or_text(value):
    text = cell(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number
