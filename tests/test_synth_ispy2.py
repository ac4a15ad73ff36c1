"""The I-SPY2 layout of the synthetic cohort looks like TCIA's published collection.

Checked from the files alone (pydicom tags, the workbook), against the description of the
published collection in ``preprocessing/synth_ispy2.py``; ``prepare`` is not run here.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SegmentationStorage,
)

from preprocessing import synth_ispy2 as ispy2
from preprocessing.cohort import VISITS, sample_cohort
from preprocessing.phantom import Anatomy, render_phases, tissue_fractions

PATIENTS, SITES, SEED = 6, 5, 6  # this seed puts a patient at every one of the five site protocols
TRIAL_TAGS = ("ClinicalTrialSubjectID", "ClinicalTrialTimePointID", "ClinicalTrialSiteID")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("ispy2_raw")
    info = ispy2.synthesize(out, patients=PATIENTS, sites=SITES, seed=SEED, workers=1)
    return out, info


@pytest.fixture(scope="module")
def headers(raw):
    """Every DICOM file's header, with its path."""
    out, _ = raw
    found = []
    for path in sorted((out / "ISPY2").rglob("*")):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found.append((path, ds))
    return found


@pytest.fixture(scope="module")
def studies(headers):
    """(PatientID, StudyInstanceUID) -> SeriesDescription -> [(path, dataset)]."""
    grouped = defaultdict(lambda: defaultdict(list))
    for path, ds in headers:
        grouped[(ds.PatientID, ds.StudyInstanceUID)][ds.SeriesDescription].append((path, ds))
    return grouped


@pytest.fixture(scope="module")
def truth(raw):
    return pd.read_csv(raw[0] / "truth.csv").set_index("id")


def _site(ds) -> int:
    return int(str(ds.PatientName).split("^Site-")[1])


def _series(study: dict, suffix: str):
    matches = [files for description, files in study.items() if description.endswith(suffix)]
    assert len(matches) == 1, (suffix, list(study))
    return matches[0]


def _normal(orientation) -> np.ndarray:
    row, col = np.reshape(np.asarray(orientation, float), (2, 3))
    return np.cross(row, col)


def _dce_phases(files) -> tuple[int, int]:
    """(phases, slices) of a DCE series, from whatever the series carries."""
    if len(files) == 1:  # enhanced multi-frame
        ds = files[0][1]
        frames = ds.PerFrameFunctionalGroupsSequence
        phases = {f.FrameContentSequence[0].TemporalPositionIndex for f in frames}
        slices = {tuple(f.PlanePositionSequence[0].ImagePositionPatient) for f in frames}
        return len(phases), len(slices)
    positions = Counter(tuple(float(c) for c in ds.ImagePositionPatient) for _, ds in files)
    per_position = set(positions.values())
    assert len(per_position) == 1  # every location repeated once per phase
    return per_position.pop(), len(positions)


# ---------------------------------------------------------------- identity and visits


def test_patient_identity_as_published(headers, raw):
    out, _ = raw
    workbook = pd.read_excel(out / ispy2.WORKBOOK)
    numbers = set(workbook["Patient_ID"])
    ids = set()
    for _, ds in headers:
        assert re.fullmatch(r"ISPY2-\d{6}", ds.PatientID)
        assert re.fullmatch(r"ISPY2-\d{6}\^Site-\d{3}", str(ds.PatientName))
        assert str(ds.PatientName).startswith(ds.PatientID + "^")
        for keyword in TRIAL_TAGS:
            assert keyword not in ds, keyword
        ids.add(ds.PatientID)
    assert len(ids) == PATIENTS
    assert {int(i.split("-")[1]) for i in ids} == numbers


def test_visits_only_in_study_description_and_one_date_out_of_order(studies, truth):
    per_patient = defaultdict(dict)
    for (pid, _), study in studies.items():
        ds = next(iter(study.values()))[0][1]
        assert re.fullmatch(r"ISPY2_MRI_T[0-3]", ds.StudyDescription)
        per_patient[pid][ds.StudyDescription[-2:]] = ds.StudyDate
    assert all(sorted(visits) == list(VISITS) for visits in per_patient.values())
    broken = {pid for pid, dates in per_patient.items() if [dates[v] for v in VISITS] != sorted(dates.values())}
    assert broken == set(truth.index[truth["date_order_broken"] == 1])
    assert len(broken) >= 1 and len(broken) < len(per_patient)


def test_phi_placeholders_are_listed(headers, raw):
    phi = json.loads((raw[0] / "phi_values.json").read_text())
    values = set(phi["values"])
    births = set()
    for _, ds in headers:
        assert str(ds.PatientName) in values
        assert ds.AccessionNumber in values
        assert ds.StudyInstanceUID in values and ds.SeriesInstanceUID in values
        assert ds.SOPInstanceUID.startswith(phi["uid_root"])
        if ds.PatientBirthDate:
            assert ds.PatientBirthDate in values
        births.add(bool(ds.PatientBirthDate))
    assert births == {True, False}  # shifted at some sites, left empty at others


# ---------------------------------------------------------------- series of a study


def test_every_study_has_dce_derived_localizer_and_mask(studies):
    assert len(studies) == PATIENTS * len(VISITS)
    for study in studies.values():
        dce = _series(study, ": original DCE")
        assert re.fullmatch(r"ISPY2: VOLSER: (uni-lateral cropped|bi-lateral): original DCE",
                            dce[0][1].SeriesDescription)
        assert list(dce[0][1].ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
        assert len({ds.SeriesInstanceUID for _, ds in dce}) == 1
        assert len({p.parent for p, _ in dce}) == 1  # all phases in one folder
        phases, slices = _dce_phases(dce)
        assert phases >= 5
        for name in ("PE2", "SER"):
            derived = _series(study, f": {name}")
            assert all(ds.SOPClassUID == MRImageStorage for _, ds in derived)
            assert list(derived[0][1].ImageType)[:2] == ["DERIVED", "PRIMARY"]
            assert len(derived) == slices
        localizer = [files for files in study.values() if "LOCALIZER" in files[0][1].ImageType]
        assert len(localizer) == 1 and len(localizer[0]) == 3
        normals = {tuple(np.round(_normal(ds.ImageOrientationPatient), 3)) for _, ds in localizer[0]}
        assert len(normals) == 3
        (_, seg), = _series(study, ": Analysis Mask")
        assert seg.SOPClassUID == SegmentationStorage
        assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
        assert seg.BitsAllocated == 8 and seg.NumberOfFrames == slices


def test_single_frame_dce_is_image_type_m_with_opaque_names(studies):
    for study in studies.values():
        dce = _series(study, ": original DCE")
        if len(dce) > 1:
            assert list(dce[0][1].ImageType) == ["ORIGINAL", "PRIMARY", "M"]
            names = [p.name for p, _ in dce]
            assert all(re.fullmatch(r"1-\d{3,}\.dcm", n) for n in names)
            # file numbers say nothing about slice position
            by_name = sorted(dce, key=lambda f: f[0].name)
            z = [float(_normal(ds.ImageOrientationPatient) @ np.asarray(ds.ImagePositionPatient, float))
                 for _, ds in by_name]
            assert z != sorted(z) and z != sorted(z, reverse=True)


def test_acquisition_time_is_frozen_and_trigger_time_times_phases(studies):
    seen = Counter()
    for study in studies.values():
        dce = _series(study, ": original DCE")
        if len(dce) == 1:
            continue
        clocks = [ds.AcquisitionTime for _, ds in dce]
        seconds = [int(c[:2]) * 3600 + int(c[2:4]) * 60 + float(c[4:]) for c in clocks]
        assert max(seconds) - min(seconds) <= 10  # phases only seconds apart
        assert all("ContrastBolusStartTime" in ds and "ContentTime" in ds for _, ds in dce)
        if "TriggerTime" in dce[0][1]:
            triggers = sorted({float(ds.TriggerTime) for _, ds in dce})
            phases, _ = _dce_phases(dce)
            assert len(triggers) == phases and triggers[0] == 0 and triggers[-1] > 300_000  # ms
            seen["trigger"] += 1
        else:
            seen["no trigger"] += 1
        if "TemporalPositionIdentifier" not in dce[0][1]:
            assert "TriggerTime" in dce[0][1]  # the only way to tell the phases apart
            seen["no temporal position"] += 1
    assert seen["trigger"] and seen["no trigger"] and seen["no temporal position"]


def test_one_site_writes_enhanced_multiframe(studies):
    sites = set()
    for study in studies.values():
        (path, ds), *rest = _series(study, ": original DCE")
        if ds.SOPClassUID != EnhancedMRImageStorage:
            continue
        assert not rest
        sites.add(_site(ds))
        frames = ds.PerFrameFunctionalGroupsSequence
        assert int(ds.NumberOfFrames) == len(frames)
        phases, slices = _dce_phases([(path, ds)])
        assert phases >= 5 and phases * slices == len(frames)
        assert "PlaneOrientationSequence" in ds.SharedFunctionalGroupsSequence[0]
        full = pydicom.dcmread(path)
        assert full.pixel_array.shape == (len(frames), ds.Rows, ds.Columns)
    assert len(sites) == 1


def test_transfer_syntaxes_vary_and_decode(studies):
    present = Counter()
    for study in studies.values():
        for files in study.values():
            path, ds = files[0]
            present[str(ds.file_meta.TransferSyntaxUID)] += 1
            full = pydicom.dcmread(path)
            assert full.pixel_array.size > 0
    always = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
              JPEGLSLossless, JPEG2000Lossless}
    assert always <= set(present)
    assert (JPEGLosslessSV1 in present) == ispy2.gdcm_available()
    assert set(present) <= always | {JPEGLosslessSV1}


def test_jpeg_lossless_sv1_round_trip():
    if not ispy2.gdcm_available():
        pytest.skip("python-gdcm is not installed: JPEG Lossless SV1 studies fall back to Explicit VR LE")
    frame = np.random.default_rng(0).integers(0, 4000, size=(23, 31)).astype(np.uint16)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 23, 31, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ispy2.encode_pixels(ds, frame, JPEGLosslessSV1)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    assert np.array_equal(ds.pixel_array, frame)


# ---------------------------------------------------------------- the Analysis Mask


def _by_position(files):
    """Slices of a single-frame series sorted along their normal, as (positions, stack)."""
    normal = _normal(files[0][1].ImageOrientationPatient)
    loaded = sorted((pydicom.dcmread(p) for p, _ in files),
                    key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    stack = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in loaded])
    return [tuple(np.round(np.asarray(d.ImagePositionPatient, float), 3)) for d in loaded], stack


def test_mask_zeros_are_the_ftv_on_the_dce_grid(studies, truth):
    ratios = []
    for (pid, _), study in studies.items():
        (path, _), = _series(study, ": Analysis Mask")
        seg = pydicom.dcmread(path)
        positions, pe = _by_position(_series(study, ": PE2"))
        frames = seg.PerFrameFunctionalGroupsSequence
        seg_positions = [tuple(np.round(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), 3))
                         for f in frames]
        assert sorted(seg_positions) == sorted(positions)  # the DCE grid
        mask = seg.pixel_array[[seg_positions.index(p) for p in positions]]  # stored 8-bit codes
        assert mask.dtype == np.uint8 and mask.shape == pe.shape
        assert set(np.unique(mask)) <= set(range(32))
        shared = seg.SharedFunctionalGroupsSequence[0]
        spacing = [float(s) for s in shared.PixelMeasuresSequence[0].PixelSpacing]
        voxel_ml = spacing[0] * spacing[1] * float(shared.PixelMeasuresSequence[0].SliceThickness) / 1000
        visit = seg.StudyDescription[-2:]
        ftv = mask == 0
        assert ftv.sum() * voxel_ml == pytest.approx(truth.loc[pid, f"ftv_ml_{visit}"], abs=1e-3)
        assert np.all(pe[ftv] >= ispy2.PE_THRESHOLD - 0.1)  # the FTV enhances early by >= 70 %
        below = (mask & ispy2.MASK_BITS["below_pe_threshold"]) > 0
        assert np.all(pe[below & (pe != 0)] < ispy2.PE_THRESHOLD + 0.1)
        if visit == "T0":
            ratios.append((ftv.sum() * voxel_ml, truth.loc[pid, "tumour_ml_T0"]))
    ftv_ml, tumour_ml = np.array(ratios).sum(axis=0)
    assert 0.7 < ftv_ml / tumour_ml < 1.2  # at baseline the FTV is most of the tumour


def test_analysis_mask_bits():
    rng = np.random.default_rng(1)
    tumour = np.zeros((6, 12, 12), bool)
    tumour[2:4, 4:8, 4:8] = True
    pe = np.where(tumour, 120.0, 20.0)
    pe[2, 4, 4] = 50.0  # a tumour voxel below the threshold
    pe[3, 2, 5] = 90.0  # an enhancing voxel beside the tumour, inside the VOI
    background = np.zeros_like(tumour)
    background[:, :, 0] = True
    mask, ftv = ispy2.analysis_mask(tumour, background, pe, rng)
    bits = ispy2.MASK_BITS
    assert np.array_equal(mask == 0, ftv) and ftv.sum() == tumour.sum() - 1
    assert mask[2, 4, 4] & bits["below_pe_threshold"]
    assert mask[3, 2, 5] == bits["connectivity"]
    assert mask[0, 0, 0] & bits["outside_voi"] and mask[0, 0, 0] & bits["background"]


def test_bilateral_field_has_heart_larger_than_the_tumour(studies, truth):
    checked = 0
    for (pid, _), study in studies.items():
        pe_files = _series(study, ": PE2")
        if "bi-lateral" not in pe_files[0][1].SeriesDescription:
            continue
        positions, pe = _by_position(pe_files)
        ds = pe_files[0][1]
        rows_y = float(ds.ImagePositionPatient[1]) + np.arange(ds.Rows) * float(ds.PixelSpacing[0])
        posterior = rows_y[None, :, None] > 25.0  # behind the chest wall
        spacing = float(ds.PixelSpacing[0]) ** 2 * float(ds.SliceThickness) / 1000
        blood_ml = ((pe > 100) & posterior).sum() * spacing
        assert blood_ml > 3 * truth.loc[pid, "tumour_ml_T0"]
        assert blood_ml > 50
        checked += 1
    assert checked


# ---------------------------------------------------------------- the workbook and truth


def test_workbook_columns_and_spellings(raw):
    out, _ = raw
    workbook = pd.read_excel(out / ispy2.WORKBOOK)
    assert list(workbook.columns) == list(ispy2.WORKBOOK_COLUMNS)
    assert pd.api.types.is_integer_dtype(workbook["Patient_ID"])
    assert workbook["Patient_ID"].between(100000, 999999).all()
    for column in ("HR", "HER2", "MP", "pCR"):
        assert set(workbook[column]) <= {0, 1}
    assert workbook["Race"].isna().any() and workbook["Race"].str.contains(";").any()
    assert workbook["ethnicity"].isna().any()
    assert set(workbook["ethnicity"].dropna()) <= {"Hispanic", "Not Hispanic", "Hispanic or Latino"}
    published = set(ispy2.PUBLISHED_AGENT.values())
    for arm in workbook["Arm"]:
        assert set(arm.split(" + ")) <= published
    clinical, _, _ = sample_cohort(PATIENTS, SITES, SEED)
    assert list(workbook["pCR"]) == list(clinical["pCR"])


def test_workbook_vocabulary_on_a_larger_cohort():
    clinical, _, _ = sample_cohort(150, 5, 3)
    workbook = ispy2.clinical_workbook(clinical, ispy2.patient_numbers(150, 3))
    races = set(workbook["Race"].dropna())
    assert {"White", "Caucasian", "Black", "Black or African American", "Asian"} <= races
    assert any(";" in r for r in races)
    assert set(workbook["ethnicity"].dropna()) == {"Hispanic", "Not Hispanic", "Hispanic or Latino"}
    arms = set(workbook["Arm"])
    for arm in ("Paclitaxel", "Paclitaxel + Neratinib", "T-DM1 + Pertuzumab",
                "Paclitaxel + Pertuzumab + Trastuzumab", "Paclitaxel + Veliparib (ABT 888) + Carboplatin"):
        assert arm in arms
    assert "DRD" not in workbook and "BluePrint" not in workbook and "site" not in workbook


def test_truth_table(raw, truth):
    assert {f"tumour_ml_{v}" for v in VISITS} <= set(truth.columns)
    assert {"latent_response", "p_clinical", "p_t0", "p_t0_t1", "p_t0_t2"} <= set(truth.columns)
    assert truth.index.str.fullmatch(r"ISPY2-\d{6}").all()
    assert (truth[[f"tumour_ml_{v}" for v in VISITS]] > 0).all().all()
    metadata = pd.read_csv(raw[0] / "metadata.csv")
    assert {"Series UID", "Subject ID", "Study Description", "File Location"} <= set(metadata.columns)
    assert set(metadata["Subject ID"]) == set(truth.index)


# ---------------------------------------------------------------- phantom option and CLI


def test_bilateral_option_leaves_the_breast_and_tumour_unchanged():
    plain = Anatomy.sample(0.4, np.random.default_rng(5))
    both = Anatomy.sample(0.4, np.random.default_rng(5), bilateral=True)
    assert plain.chest is None and both.chest is not None
    for field in ("breast_axes", "tumour_centre", "tumour_shape", "texture"):
        assert np.array_equal(getattr(plain, field), getattr(both, field))
    assert plain.tumour_volume_ml == both.tumour_volume_ml and plain.washout == both.washout
    # the heart enhances strongly; the tumour-free breast holds no tumour
    heart = both.chest.heart_centre[None]
    pre, early = render_phases(both, heart, 2.0, 0.0, [-30.0, 150.0], 1.0, 0.0, np.random.default_rng(0))
    assert early[0] / pre[0] > 2.0
    centre = both.tumour_centre + [both.chest.tumour_side * both.chest.breast_offset_mm, 0, 0]
    fractions, _ = tissue_fractions(both, np.stack([centre, centre * [-1, 1, 1]]), 1.0, 2.0)
    assert fractions["tumour"][0] > 0.99 and fractions["tumour"][1] < 1e-6  # its mirror image: none
    assert fractions["fat"][1] + fractions["fgt"][1] > 0.5


def test_cli_writes_the_ispy2_layout(tmp_path):
    from preprocessing.__main__ import main

    out = tmp_path / "raw"
    assert main(["synth", "--layout", "ispy2", "--out", str(out), "--patients", "1", "--sites", "1",
                 "--workers", "1"]) == 0
    assert (out / ispy2.WORKBOOK).is_file() and (out / "truth.csv").is_file()
    assert len(list((out / "ISPY2").iterdir())) == 1
