"""Cohort schemas: presets, spellings, blanks, exclusions and the recorded encoding."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from preprocessing.clinical import ClinicalTableError, read_clinical
from preprocessing.schema import SchemaError, load_schema, preset

PACKAGE = Path(__file__).resolve().parent.parent / "preprocessing"


def _workbook(tmp_path, rows: list[dict]) -> Path:
    """An I-SPY2 clinical workbook as TCIA publishes it (ids stored as numbers)."""
    base = {"Patient_ID": 123456, "Arm": "Paclitaxel + Neratinib", "HR": 1, "HER2": 0, "MP": 1, "pCR": 0,
            "Age_at_Screening": 47, "Race": "White", "ethnicity": "Not Hispanic", "Surgeon": "DR SMITH"}
    path = tmp_path / "ISPY2_clinical.xlsx"
    pd.DataFrame([{**base, **row} for row in rows]).to_excel(path, index=False)
    return path


def test_ispy2_workbook_spellings_blanks_and_multi_race(tmp_path):
    path = _workbook(tmp_path, [
        {"Patient_ID": 12345, "Race": "Caucasian", "ethnicity": "Hispanic"},
        {"Patient_ID": 234567, "Arm": "Veliparib (ABT 888) + Carboplatin + Paclitaxel", "Race": "Asian;White",
         "ethnicity": None},
        {"Patient_ID": 345678, "Arm": "T-DM1 + Pertuzumab", "Race": None, "pCR": 1},
        {"Patient_ID": 456789, "Race": "Black"},
    ])
    patients, exclusions, warnings = read_clinical(path, preset("ispy2"))
    assert exclusions == []
    assert sorted(patients) == ["012345", "234567", "345678", "456789"]  # zero-padded as in ISPY2-012345
    first = patients["012345"]["clinical"]
    assert first["agents"] == ["Neratinib", "Paclitaxel"] and first["age"] == 47
    assert (first["race"], first["ethnicity"]) == ("White", "Hispanic or Latino")
    assert patients["234567"]["clinical"]["agents"] == ["ABT 888", "Carboplatin", "Paclitaxel"]
    assert (patients["234567"]["clinical"]["race"], patients["234567"]["clinical"]["ethnicity"]) == (
        "Multiple", "unknown")
    assert patients["345678"]["clinical"]["race"] == "unknown" and patients["345678"]["label"] == 1
    assert patients["456789"]["clinical"]["race"] == "Black or African American"
    assert set(first) == {"agents", "age", "race", "ethnicity", "HR", "HER2", "MammaPrint", "arm"}
    assert not {"DRD", "immune", "BluePrint"} & set(first)  # absent from the public table: not imputed
    assert "DR SMITH" not in repr(patients) + repr(warnings)  # unused columns never reach outputs


@pytest.mark.parametrize("row,reason", [
    ({"Age_at_Screening": None}, "clinical field 'age' (column Age_at_Screening) is missing"),
    ({"Arm": "Paclitaxel + Unobtainium"}, "clinical field 'agents' (column Arm) has unknown value 'Unobtainium'"),
    ({"HR": "maybe"}, "clinical field 'HR' (column HR) must be 0 or 1, got 'maybe'"),
    ({"pCR": None}, "clinical field 'label' (column pCR) is missing"),
    ({"Race": "Martian"}, "clinical field 'race' (column Race) has unknown value 'Martian'"),
    ({"Age_at_Screening": 4}, "clinical field 'age' (column Age_at_Screening) out of range [10, 110]"),
])
def test_required_fields_and_unknown_spellings_exclude_with_the_reason(tmp_path, row, reason):
    path = _workbook(tmp_path, [{"Patient_ID": 111111}, {"Patient_ID": 222222, **row}])
    patients, exclusions, _ = read_clinical(path, preset("ispy2"))
    assert list(patients) == ["111111"]
    assert [(e["id"], e["visit"]) for e in exclusions] == [("222222", "-")]
    assert exclusions[0]["reason"].startswith(reason)


def test_duplicate_and_missing_ids_and_missing_columns(tmp_path):
    path = _workbook(tmp_path, [{"Patient_ID": 111111}, {"Patient_ID": 111111}, {"Patient_ID": None}])
    patients, exclusions, _ = read_clinical(path, preset("ispy2"))
    assert patients == {}
    assert [e["reason"] for e in exclusions] == ["duplicate id in clinical table (2 rows)"] * 2 + [
        "clinical table row 4: missing id"]
    pd.read_excel(path).drop(columns="MP").to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(ClinicalTableError, match=r"table.csv: missing column\(s\) MP \(schema ispy2\)"):
        read_clinical(tmp_path / "table.csv", preset("ispy2"))


def test_synthetic_preset_reads_the_generators_table_and_records_table_1(tiny_raw):
    schema = preset("synthetic")
    patients, exclusions, _ = read_clinical(tiny_raw / "clinical.csv", schema)
    assert len(patients) == 6 and exclusions == []
    table = pd.read_csv(tiny_raw / "clinical.csv", dtype={"id": str}).set_index("id")
    for pid, patient in patients.items():
        row = table.loc[pid]
        marked = sorted(c for c in table if c.startswith("agent_") and row[c] == 1)
        assert len(patient["clinical"]["agents"]) == len(marked)
        assert patient["clinical"]["race"] == row["race"] and patient["site"] == row["site"]
    record = [f for f in schema.field_record() if f["group"] != "rhpc"]
    assert [f["name"] for f in record] == ["agents", "age", "race", "ethnicity", "HR", "HER2", "MammaPrint", "DRD",
                                           "immune", "BluePrint"]
    widths = [len(f.get("levels", [0])) for f in record]
    assert (sum(widths[:4]), sum(widths[4:])) == (20, 8)  # Table 1 of Jing & Wang


def test_user_schema_errors_name_the_file_and_problem(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("clinical:\n  id: {column: MRN}\n  label: {column: pcr}\n  fields:\n"
                   "    age: {group: clinical, type: number, column: Age}\n"
                   "    grade: {group: tumour, type: category, column: Grade, levels: {1: [], 2: []}}\n")
    with pytest.raises(SchemaError, match="mine.yaml: field 'grade' needs group in"):
        load_schema(bad)
    bad.write_text("clinical:\n  id: {column: MRN}\n  label: {column: pcr}\n  fields:\n"
                   "    HR: {group: subtype, type: binary, column: HR}\n")
    with pytest.raises(SchemaError, match="fields need 'age'"):
        load_schema(bad)
    with pytest.raises(SchemaError, match="unknown preset 'tcga' \\(presets: ispy2, synthetic\\)"):
        preset("tcga")


def test_preparation_takes_fields_from_the_schema_not_the_generator():
    """Only the generator (synth*, cohort) may import the generator's vocabularies."""
    for path in PACKAGE.glob("*.py"):
        if path.stem.startswith("synth") or path.stem == "cohort":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("cohort", "preprocessing.cohort"), path


def test_csv_and_excel_read_alike(tmp_path):
    """Whole numbers stored as text (12345.0), "NA" and "Not reported" mean the same in both formats."""
    path = _workbook(tmp_path, [{"Patient_ID": 12345, "Race": "Not reported"}, {"Patient_ID": 23456, "Race": "NA"}])
    table = pd.read_excel(path, keep_default_na=False).astype({"Patient_ID": float}).astype(str)
    table.to_csv(tmp_path / "table.csv", index=False)
    results = [read_clinical(p, preset("ispy2"))[:2] for p in (path, tmp_path / "table.csv")]
    assert results[0] == results[1]
    patients, exclusions = results[0]
    assert patients["012345"]["clinical"]["race"] == "unknown"
    assert [e["id"] for e in exclusions] == ["023456"]  # "NA" is no spelling of this schema
    race = next(f for f in preset("ispy2").field_record() if f["name"] == "race")
    assert race["levels"].count("unknown") == 1


def test_values_that_may_be_phi_stay_out_of_reasons(tmp_path):
    path = _workbook(tmp_path, [{"Patient_ID": 111111, "Age_at_Screening": "1962-03-04"},
                                {"Patient_ID": 222222, "Race": "MRN 55501"}])
    _, exclusions, _ = read_clinical(path, preset("ispy2"))
    reasons = " | ".join(e["reason"] for e in exclusions)
    assert "1962" not in reasons and "55501" not in reasons
    assert "'age' (column Age_at_Screening) is not a number" in reasons


def test_dicom_section_and_extra_are_checked(tmp_path):
    base = ("clinical:\n  id: {column: MRN}\n  label: {column: pcr}\n  fields:\n"
            "    age: {group: clinical, type: number, column: Age}\n")
    path = tmp_path / "mine.yaml"
    path.write_text(base + "dicom:\n  series_include: original DCE\n")
    assert load_schema(path).dicom["series_include"] == ("original DCE",)  # one pattern, not its letters
    path.write_text(base + "dicom:\n  visit_pattern: 'Visit (T\\d'\n")
    with pytest.raises(SchemaError, match="dicom visit_pattern: not a regular expression"):
        load_schema(path)
    path.write_text(base + "  extra: {age: Age}\n")
    with pytest.raises(SchemaError, match="extra name\\(s\\) age are also fields"):
        load_schema(path)
