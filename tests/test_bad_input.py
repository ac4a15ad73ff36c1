"""Bad input: fatal problems stop with one line; per-study problems are excluded with a reason."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import dicom_files

from preprocessing.prepare import Options, prepare

OPTIONS = Options(size=16, spacing=4.0)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "preprocessing", "prepare", *args],
                          capture_output=True, text=True, timeout=300)


def _assert_fatal(result, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_missing_clinical_table_is_fatal(raw_copy, tmp_path):
    (raw_copy / "clinical.csv").unlink()
    _assert_fatal(_run_cli("--raw", str(raw_copy), "--out", str(tmp_path / "out")), "clinical table not found")
    assert not (tmp_path / "out").exists()


def test_missing_folder_and_unusable_table_are_fatal(tmp_path):
    _assert_fatal(_run_cli("--raw", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")), "not found")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "clinical.csv").write_text("id,pCR\n")
    _assert_fatal(_run_cli("--raw", str(raw), "--out", str(tmp_path / "out")), "missing column(s)", "age")


def test_folder_without_images_is_fatal(tiny_raw, tmp_path):
    raw = tmp_path / "noimages"
    raw.mkdir()
    (raw / "clinical.csv").write_bytes((tiny_raw / "clinical.csv").read_bytes())
    _assert_fatal(_run_cli("--raw", str(raw), "--out", str(tmp_path / "out")), "no files")
    (raw / "notes.txt").write_text("not an image")
    _assert_fatal(_run_cli("--raw", str(raw), "--out", str(tmp_path / "out")), "no DICOM images")


@pytest.fixture(scope="module")
def damaged(tiny_raw, tmp_path_factory):
    """One cohort with every per-study problem; patients ISPY100001..ISPY100006."""
    import shutil

    raw = shutil.copytree(tiny_raw, tmp_path_factory.mktemp("damaged") / "raw")
    for path in dicom_files(raw, "ISPY100001", "T2"):  # missing required visit
        path.unlink()
    path = dicom_files(raw, "ISPY100002", "T0")[5]  # one slice with another pixel spacing
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [1.0, 1.0]
    ds.save_as(path)
    path = dicom_files(raw, "ISPY100006", "T3")[3]  # truncated file in an optional visit
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (raw / "dicom" / "README.txt").write_text("exported by a PACS")  # non-DICOM files in the tree
    (dicom_files(raw, "ISPY100006", "T0")[0].parent / "junk.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    table = pd.read_csv(raw / "clinical.csv", dtype={"id": str})
    table.loc[table["id"] == "ISPY100004", "race"] = "Martian"  # unknown category
    extra = table[table["id"] == "ISPY100006"].assign(id="ISPY900001")  # a row without images
    nan_row = extra.assign(id="ISPY900002", age=np.nan)  # a missing value
    duplicate = table[table["id"] == "ISPY100005"]  # duplicate id
    table = table[table["id"] != "ISPY100003"]  # images without a clinical row
    pd.concat([table, extra, nan_row, duplicate]).to_csv(raw / "clinical.csv", index=False)
    out = raw.parent / "out"
    datalist = prepare(raw, out, OPTIONS, workers=2)
    exclusions = pd.read_csv(out / "exclusions.csv", keep_default_na=False)
    return datalist, exclusions


def _reasons(exclusions, patient):
    return " | ".join(exclusions.loc[exclusions["id"] == patient, "reason"])


def test_only_the_clean_patient_and_visits_survive(damaged):
    datalist, _ = damaged
    assert [e["id"] for e in datalist["training"]] == ["ISPY100006"]
    entry = datalist["training"][0]
    assert "T3" not in entry and set(entry["ftv_ml"]) == {"T0", "T1", "T2"}


def test_missing_visit(damaged):
    assert "missing visit(s) T2" in _reasons(damaged[1], "ISPY100001")


def test_geometry_mismatch_between_slices(damaged):
    reasons = _reasons(damaged[1], "ISPY100002")
    assert "geometry" in reasons and "T0" in damaged[1].loc[damaged[1]["id"] == "ISPY100002", "visit"].tolist()


def test_truncated_file_excludes_only_its_visit(damaged):
    exclusions = damaged[1]
    row = exclusions[(exclusions["id"] == "ISPY100006")]
    assert row["visit"].tolist() == ["T3"] and "unreadable or incomplete" in row["reason"].iloc[0]


def test_non_dicom_files_are_listed(damaged):
    reasons = " | ".join(damaged[1]["reason"])
    assert "not a DICOM object (InvalidDicomError): 2 file(s)" in reasons  # counted: names may hold PHI
    assert "README" not in reasons and "junk" not in reasons


def test_images_without_clinical_row_are_listed_by_digest_only(damaged):
    exclusions = damaged[1]
    assert "ISPY100003" not in exclusions["id"].tolist()
    assert exclusions["reason"].str.contains("DICOM patient has no valid row in the clinical table").sum() >= 1


def test_clinical_problems(damaged):
    exclusions = damaged[1]
    assert "unknown value 'Martian'" in _reasons(exclusions, "ISPY100004")
    assert "no DICOM study found" in _reasons(exclusions, "ISPY900001")
    assert "clinical field 'age' (column age) is missing" in _reasons(exclusions, "ISPY900002")
    assert "duplicate id" in _reasons(exclusions, "ISPY100005")
