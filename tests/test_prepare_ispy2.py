"""End to end: a cohort in the layout TCIA publishes I-SPY2, prepared with ``--preset ispy2`` and
no hand-editing (bare workbook ids, visits in StudyDescription, frozen clocks, derived series,
SEG, compressed syntaxes, Enhanced MR, bilateral fields)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from preprocessing.agreement import ftv_agreement
from preprocessing.clinical import pseudonym
from preprocessing.prepare import Options, prepare
from preprocessing.summary import summarize
from preprocessing.synth_ispy2 import synthesize

PATIENTS = 6
EXCLUDED = 999999  # a workbook row without images
SIZE = ["--size", "24", "--spacing", "2.5"]


def _prepare_cli(raw, out, *extra, salt=None):
    env = {k: v for k, v in os.environ.items() if k != "PCR_PSEUDONYM_SALT"} | ({"PCR_PSEUDONYM_SALT": salt} if salt else {})
    return subprocess.run([sys.executable, "-m", "preprocessing", "prepare", "--preset", "ispy2", "--raw", str(raw),
                           "--clinical", str(raw / "ISPY2_clinical.xlsx"), "--out", str(out), "--workers", "2",
                           *SIZE, *extra], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def ispy2(tmp_path_factory):
    raw = tmp_path_factory.mktemp("ispy2") / "raw"
    synthesize(raw, patients=PATIENTS, seed=5, workers=2)
    # a workbook row that is excluded (no images, unknown race spelling): its id must not leak either
    sheets = pd.read_excel(raw / "ISPY2_clinical.xlsx", sheet_name=None)
    first = next(iter(sheets))
    sheets[first] = pd.concat([sheets[first], sheets[first].iloc[:1].assign(Patient_ID=EXCLUDED, Race="Martian")])
    with pd.ExcelWriter(raw / "ISPY2_clinical.xlsx") as writer:
        for name, sheet in sheets.items():
            sheet.to_excel(writer, sheet_name=name, index=False)
    out = raw.parent / "prepared"
    done = _prepare_cli(raw, out)
    assert done.returncode == 0, done.stderr[-2000:]
    truth = pd.read_csv(raw / "truth.csv")
    key = (raw.parent / "prepared.pseudonym-key").read_text().strip()
    truth["public_id"] = [pseudonym(i.removeprefix("ISPY2-"), key) for i in truth["id"]]
    return raw, out, done, truth.set_index("public_id")


def test_every_patient_is_prepared_with_the_published_fields(ispy2):
    raw, out, _, truth = ispy2
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["numTraining"] == PATIENTS and datalist["schema"] == "ispy2"
    entries = datalist["training"]
    assert all(set(e["ftv_ml"]) == {"T0", "T1", "T2", "T3"} for e in entries)
    assert {e["site"] for e in entries} == {s.removeprefix("Site-") for s in truth["site"]}  # from PatientName
    assert [f["name"] for f in datalist["clinical_fields"]] == ["agents", "age", "race", "ethnicity", "HR", "HER2",
                                                                "MammaPrint"]
    workbook = pd.read_excel(raw / "ISPY2_clinical.xlsx", sheet_name="Clinical")
    assert workbook["Race"].isna().any() and workbook["Race"].str.contains(";").any()  # blanks and multi-race kept
    races = {e["clinical"]["race"] for e in entries}
    assert races <= set(next(f for f in datalist["clinical_fields"] if f["name"] == "race")["levels"])
    exclusions = pd.read_csv(out / "exclusions.csv", keep_default_na=False)
    excluded = exclusions[exclusions["id"] != "-"]  # else only counts of skipped series and non-DICOM files
    key = (raw.parent / "prepared.pseudonym-key").read_text().strip()
    assert excluded["id"].tolist() == [pseudonym(str(EXCLUDED), key)]
    assert excluded["reason"].iloc[0] == "clinical field 'race' (column Race) has unknown value 'Martian'"
    reasons = " | ".join(exclusions["reason"])
    for kind in ("skipped series: SEG", "skipped series: derived", "skipped series: localizer"):
        assert f"{kind}" in reasons


def test_ids_are_pseudonyms_with_the_key_beside_the_output(ispy2):
    raw, out, _, truth = ispy2
    datalist = json.loads((out / "datalist.json").read_text())
    assert sorted(e["id"] for e in datalist["training"]) == sorted(truth.index)
    assert not list(out.rglob("*pseudonym-key*"))  # the key stays beside the folder one shares


def test_ftv_tracks_the_tumour_as_closely_as_on_the_native_layout(ispy2, tiny_raw, tmp_path):
    raw, out, _, truth = ispy2
    key = (out.parent / "prepared.pseudonym-key").read_text().strip()
    published = ftv_agreement(out, raw / "truth.csv", salt=key)
    prepare(tiny_raw, tmp_path / "native", Options(size=24, spacing=2.5), workers=2)
    reference = ftv_agreement(tmp_path / "native", tiny_raw / "truth.csv")
    assert published["visits"] == 4 * PATIENTS and published["log_correlation"] > 0.8
    error, native_error = published["median_abs_log_ratio"], reference["median_abs_log_ratio"]
    assert error < 0.35 and error <= max(1.5 * native_error, native_error + 0.1), (error, native_error)


def test_ftv_from_the_collections_analysis_mask(ispy2):
    raw, out, _, truth = ispy2
    seg_out = out.parent / "prepared_seg"
    key = (out.parent / "prepared.pseudonym-key").read_text().strip()  # the same pseudonyms
    done = _prepare_cli(raw, seg_out, "--ftv-source", "seg", salt=key)
    assert done.returncode == 0, done.stderr[-2000:]
    agreement = ftv_agreement(seg_out, raw / "truth.csv", "ftv_ml", salt=key)
    assert agreement["median_abs_log_ratio"] < 0.01  # the mask's own FTV, counted on its grid
    sidecars = [json.loads(p.read_text()) for p in seg_out.glob("images/*/*.json")]
    assert {s["ftv_source"] for s in sidecars} == {"seg"}
    datalist = json.loads((seg_out / "datalist.json").read_text())
    assert {s for e in datalist["training"] for s in e["ftv_source"].values()} == {"seg"}


def test_no_phi_in_any_output(ispy2):
    raw, out, done, truth = ispy2
    phi = json.loads((raw / "phi_values.json").read_text())
    values = set(phi["values"]) | set(truth["id"]) | {i.removeprefix("ISPY2-") for i in truth["id"]} | {str(EXCLUDED)}
    values |= {phi["uid_root"]}
    assert len(values) > 50
    blobs = {"log": (done.stdout + done.stderr).encode()}
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blobs[str(path.relative_to(out))] = gzip.decompress(data) if path.suffix == ".gz" else data
    for value in values:
        for name, blob in blobs.items():
            assert value.encode() not in blob, f"PHI value found in {name}"


def test_summary_matches_truth_through_the_pseudonyms(ispy2):
    raw, out, _, truth = ispy2
    key = (out.parent / "prepared.pseudonym-key").read_text().strip()
    summary = summarize(out, raw / "truth.csv", salt=key)
    assert set(summary["oracle_auroc"]) >= {"p_clinical", "p_t0_t1", "p_rhpc", "p_rhpc_mri"}
    with pytest.raises(ValueError, match="pseudonym key is needed"):
        summarize(out, raw / "truth.csv")
