"""DICOM discovery on the layouts of real collections: TCIA I-SPY2 and hospital exports.

Small DICOM files are built here with pydicom; ``write_series`` is shared with the volume and
transfer-syntax tests.
"""

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)

from preprocessing.dicom_index import DicomRules, group_visits, scan_headers, select_phases
from preprocessing.volume import read_phase

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
ISPY2 = DicomRules(patient_pattern=r"ISPY2-(\d+)", visit_pattern=r"ISPY2_MRI_(T\d)")
ISPY2_DCE = "ISPY2: VOLSER: uni-lateral cropped: original DCE"


def uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def dataset(sop_class: str, **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "SEG" if sop_class == SegmentationStorage else "MR"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """16-bit unsigned pixel data; a 3-D array is a multi-frame one."""
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(pixels)
    ds.PixelData = pixels.astype(np.uint16).tobytes()


def write_series(folder: Path, volumes: np.ndarray, phase_tags=lambda k: {}, slice_mm: float = 2.0,
                 sop_class: str = MRImageStorage, **tags) -> list[Path]:
    """One file per (phase, slice) of ``volumes`` (phases, slices, rows, columns), named so that
    file order is unrelated to position or phase; ``phase_tags(k)`` adds tags of phase k."""
    folder.mkdir(parents=True, exist_ok=True)
    n_phases, n_slices = volumes.shape[:2]
    paths = []
    for k in range(n_phases):
        for s in range(n_slices):
            ds = dataset(sop_class, ImagePositionPatient=[-20.0, -30.0, 10.0 + slice_mm * s],
                         ImageOrientationPatient=list(AXIAL), PixelSpacing=[0.8, 0.7],
                         InstanceNumber=k * n_slices + s + 1, **tags, **phase_tags(k))
            set_pixels(ds, volumes[k, s])
            paths.append(folder / f"{uid(folder, k, s)[-12:]}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def write_seg(folder: Path, **tags) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ds = dataset(SegmentationStorage, ImageType=["DERIVED", "PRIMARY"], **tags)
    path = folder / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def volumes(n_phases: int, n_slices: int = 3, shape=(6, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (n_phases, n_slices, *shape)).astype(np.uint16)


def discover(root: Path, rules: DicomRules = DicomRules()):
    headers, skipped_files = scan_headers(sorted(p for p in root.rglob("*") if p.is_file()), rules)
    assert not skipped_files
    return group_visits(headers, rules)


def _ispy2_study(root: Path, patient: str = "ISPY2-100001", visit: str = "ISPY2_MRI_T0", seed: int = 0):
    """An I-SPY2 study as TCIA publishes it: one DCE series with all phases and no
    TemporalPositionIdentifier, frozen clocks, PE2/SER maps and an Analysis Mask SEG."""
    study = {"PatientID": patient, "PatientName": f"{patient}^Site-123", "StudyInstanceUID": uid(patient, visit),
             "StudyDescription": visit, "StudyDate": "20120101"}
    dce = volumes(5, seed=seed)
    trigger_s = [0.0, 90.0, 180.0, 360.0, 450.0]
    write_series(root / visit / "dce", dce, lambda k: {
        "TriggerTime": trigger_s[k] * 1000, "AcquisitionTime": f"10100{k}", "ContentTime": f"10100{k}.5",
    }, SeriesInstanceUID=uid(patient, visit, "dce"), SeriesDescription=ISPY2_DCE,
        ImageType=["ORIGINAL", "PRIMARY", "OTHER"], ContrastBolusStartTime="100900", **study)
    for name in ("PE2", "SER"):
        write_series(root / visit / name, dce[:1], SeriesInstanceUID=uid(patient, visit, name),
                     SeriesDescription=f"ISPY2: VOLSER: uni-lateral cropped: {name}",
                     ImageType=["DERIVED", "SECONDARY"], **study)
    seg = write_seg(root / visit / "seg", SeriesInstanceUID=uid(patient, visit, "seg"),
                    SeriesDescription="ISPY2: VOLSER: uni-lateral cropped: Analysis Mask", **study)
    return dce, seg


def test_ispy2_study_as_published(tmp_path):
    dce, seg = _ispy2_study(tmp_path)
    patients, skipped = discover(tmp_path, ISPY2)
    assert list(patients) == ["100001"] and list(patients["100001"]) == ["T0"]
    visit = patients["100001"]["T0"]
    assert visit.segs == [str(seg)] and len(visit.phases) == 5
    pre, early, late, how = select_phases(list(visit.phases.values()))
    assert (how, pre.time_s, early.time_s, late.time_s) == ("TriggerTime", 0.0, 180.0, 450.0)
    for phase, k in ((pre, 0), (early, 2), (late, 4)):
        np.testing.assert_array_equal(read_phase(phase)[0], dce[k])
    assert skipped == [("100001", "T0", "skipped series: SEG", 1),
                       ("100001", "T0", "skipped series: derived (ImageType DERIVED)", 2)]


def test_unmatched_patient_key_and_study_description_are_reported(tmp_path):
    _ispy2_study(tmp_path / "a")
    _ispy2_study(tmp_path / "b", visit="ISPY2_MRI_SCREENING")
    _ispy2_study(tmp_path / "c", patient="MRN77")
    patients, skipped = discover(tmp_path, ISPY2)
    assert list(patients) == ["100001"] and list(patients["100001"]) == ["T0"]  # not renumbered
    assert ("100001", "-", "study description does not match visit_pattern", 1) in skipped
    assert ("MRN77", "-", "patient key does not match patient_pattern", 1) in skipped
    phi = ("ISPY2", "VOLSER", "Site-", "SCREENING", "Analysis Mask")
    assert not [r for _, _, r, _ in skipped if any(v in r for v in phi)]


def test_visits_by_study_date_without_tag_or_pattern(tmp_path):
    for date, visit in (("20120301", "b"), ("20120101", "a")):
        study = {"PatientID": "P1", "StudyInstanceUID": uid(date), "StudyDate": date}
        write_series(tmp_path / visit, volumes(3, seed=len(visit)), lambda k: {"TemporalPositionIdentifier": k + 1},
                     SeriesInstanceUID=uid(date, "dce"), **study)
    patients, skipped = discover(tmp_path)
    assert {v: visit.study_date for v, visit in patients["P1"].items()} == {"T0": "20120101", "T1": "20120301"}
    assert skipped == []
    # a baseline exam without a usable DCE keeps its place: later studies are not renamed
    study = {"PatientID": "P1", "StudyInstanceUID": uid("early"), "StudyDate": "20111201"}
    write_series(tmp_path / "early", volumes(2), lambda k: {"TemporalPositionIdentifier": k + 1},
                 SeriesInstanceUID=uid("early", "dce"), **study)
    patients, skipped = discover(tmp_path)
    assert {v: visit.study_date for v, visit in patients["P1"].items()} == {"T1": "20120101", "T2": "20120301"}
    assert ("P1", "T0", "no dynamic series in study", 1) in skipped


def test_hospital_export_selects_the_dynamic_series(tmp_path):
    """Localizer, T2w, DWI, subtraction and a screen capture beside a DCE of one series per phase."""
    study = {"PatientID": "MRN0001", "StudyInstanceUID": uid("h"), "StudyDate": "20200101",
             "ContrastBolusStartTime": "120000"}
    dce = volumes(4)
    for k in range(4):  # one series per phase, timed by the clock only (TriggerTime 0)
        write_series(tmp_path / f"dyn{k}", dce[k:k + 1], SeriesInstanceUID=uid("dyn", k), SeriesNumber=10 + k,
                     SeriesDescription=f"Ph{k + 1}/Ax Vibrant", ImageType=["ORIGINAL", "PRIMARY"], TriggerTime=0,
                     AcquisitionTime=f"120{2 * k}10", **study)
    others = {"loc": (["ORIGINAL", "PRIMARY", "LOCALIZER"], "3-pl survey", volumes(1)),
              "t2": (["ORIGINAL", "PRIMARY"], "Ax T2 FSE", volumes(1)),
              "dwi": (["ORIGINAL", "PRIMARY"], "Ax DWI b0 b400 b800", volumes(3)),  # looks dynamic
              "sub": (["ORIGINAL", "PRIMARY"], "Ph2/Ax Vibrant SUB", volumes(1))}
    for name, (image_type, description, data) in others.items():
        write_series(tmp_path / name, data, SeriesInstanceUID=uid(name), ImageType=image_type,
                     SeriesDescription=description, **study)
    write_series(tmp_path / "sc", volumes(1), sop_class=SecondaryCaptureImageStorage, SeriesInstanceUID=uid("sc"),
                 **study)
    patients, skipped = discover(tmp_path)
    visit = patients["MRN0001"]["T0"]
    assert sorted(p.series_number for p in visit.phases.values()) == [10, 11, 12, 13]
    pre, early, late, how = select_phases(list(visit.phases.values()))
    # post-contrast centres 60, 180, 300 s after the first post-contrast phase starts
    assert (how, pre.time_s, early.time_s, late.time_s) == ("AcquisitionTime", 10.0, 250.0, 370.0)
    np.testing.assert_array_equal(read_phase(early)[0], dce[2])
    assert skipped == [("MRN0001", "T0", "skipped series: description deny-list", 3),
                       ("MRN0001", "T0", "skipped series: localizer", 1),
                       ("MRN0001", "T0", "skipped series: not MR image storage", 1)]


def test_several_dynamic_series_are_reported_not_merged(tmp_path):
    study = {"PatientID": "P1", "StudyInstanceUID": uid("s"), "StudyDate": "20200101"}
    for name in ("dyn_fs", "dyn_nonfs"):
        write_series(tmp_path / name, volumes(3), lambda k: {"TemporalPositionIdentifier": k + 1},
                     SeriesInstanceUID=uid(name), SeriesDescription=name, **study)
    patients, skipped = discover(tmp_path)
    assert patients == {}
    # an exam without one DCE series keeps its date-order name, so later visits are not renamed
    assert skipped == [("P1", "T0", "several candidate dynamic series in study", 1)]
    for rules, chosen in ((DicomRules(series_exclude=("nonfs",)), "dyn_fs"),
                          (DicomRules(series_include=(r"NONFS$",)), "dyn_nonfs")):
        patients, skipped = discover(tmp_path, rules)
        assert {p.key[0] for p in patients["P1"]["T0"].phases.values()} == {uid(chosen)}
        assert len(skipped) == 1 and skipped[0][2].startswith("skipped series: ")


def test_phases_of_one_series_without_temporal_position(tmp_path):
    """Repeated slice positions: split by TriggerTime, else AcquisitionTime, else InstanceNumber."""
    dce = volumes(4)
    study = {"PatientID": "P1", "StudyDate": "20200101", "ContrastBolusStartTime": "090000"}
    cases = {"trigger": lambda k: {"TriggerTime": [0, 70000, 160000, 400000][k]},
             "clock": lambda k: {"AcquisitionTime": f"090{2 * k}00"},
             "instance": lambda k: {}}
    expected = {"trigger": ("TriggerTime", 160.0), "clock": ("AcquisitionTime", 240.0), "instance": ("index", None)}
    for name, tags in cases.items():
        write_series(tmp_path / name, dce, tags, StudyInstanceUID=uid(name), SeriesInstanceUID=uid(name, "dce"),
                     **study)
        patients, skipped = discover(tmp_path / name)
        pre, early, late, how = select_phases(list(patients["P1"]["T0"].phases.values()))
        assert (how, early.time_s) == expected[name] and skipped == []
        for phase, k in ((pre, 0), (early, 2), (late, 3)):
            np.testing.assert_array_equal(read_phase(phase)[0], dce[k])



def test_two_studies_claiming_one_visit_are_reported(tmp_path):
    for name in ("a", "b"):
        write_series(tmp_path / name, volumes(3), lambda k: {"TemporalPositionIdentifier": k + 1},
                     PatientID="P1", ClinicalTrialTimePointID="T1", StudyInstanceUID=uid(name),
                     SeriesInstanceUID=uid(name, "dce"), StudyDate="20200101")
    patients, skipped = discover(tmp_path)
    assert patients == {} and skipped == [("P1", "T1", "several studies with a dynamic series for one visit", 2)]
