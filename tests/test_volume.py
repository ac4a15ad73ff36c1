"""The slice stacking and geometry of ``read_phase`` against ITK's DICOM series reader (GDCM)."""

import itk
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage
from test_discovery import AXIAL, dataset, discover, set_pixels, uid, volumes

from preprocessing.dicom_index import group_visits, scan_headers, select_phases
from preprocessing.volume import phase_geometry, ras_affine, read_phase, resample_around


def test_read_phase_matches_itk_series_reader(tiny_raw):
    headers, skipped = scan_headers(sorted((tiny_raw / "dicom").rglob("*.dcm")))
    patients, skipped_series = group_visits(headers)
    assert not skipped and not skipped_series
    seen = set()
    for patient in patients.values():
        phase = select_phases(list(patient["T0"].phases.values()))[2]  # late phase: rescaled values at one site
        volume, geometry = read_phase(phase)
        orientation = tuple(np.round(geometry.direction[:, 2]))
        if orientation in seen:
            continue
        seen.add(orientation)
        _, slices = phase_geometry(phase)
        reference = itk.imread([s.path for s in slices], itk.F)
        np.testing.assert_allclose(volume, itk.array_from_image(reference), rtol=1e-6)
        np.testing.assert_allclose(geometry.origin, np.array(reference.GetOrigin()), atol=1e-3)
        np.testing.assert_allclose(geometry.spacing, np.array(reference.GetSpacing()), atol=1e-3)
        np.testing.assert_allclose(geometry.direction, itk.array_from_matrix(reference.GetDirection()), atol=1e-4)
    assert len(seen) >= 2  # axial and sagittal acquisitions


def test_resampled_grid_and_nifti_affine_agree():
    """A bright voxel at a known LPS position lands where the RAS affine says it is."""
    from preprocessing.volume import Geometry

    array = np.zeros((20, 20, 20), dtype=np.float32)
    array[12, 5, 8] = 1.0  # (slice, row, column)
    geometry = Geometry(np.array([-10.0, 4.0, 30.0]), np.array([2.0, 2.0, 2.0]), np.eye(3), array.shape)
    point_lps = geometry.to_physical(np.array([12.0, 5.0, 8.0]))
    out = resample_around(array, geometry, point_lps, size=9, spacing_mm=2.0, nearest=True)
    index = np.argwhere(out == 1.0)
    assert index.tolist() == [[4, 4, 4]]
    ras = ras_affine(point_lps, 9, 2.0) @ np.array([4, 4, 4, 1.0])
    np.testing.assert_allclose(ras[:3], point_lps * np.array([-1, -1, 1]))


def _item(**tags) -> Dataset:
    item = Dataset()
    for keyword, value in tags.items():
        setattr(item, keyword, value)
    return item


def test_enhanced_mr_frames_are_slices_of_phases(tmp_path, monkeypatch):
    """One Enhanced MR file, frames stored in any order: geometry, phase and timing per frame
    from the functional groups (shared and per-frame), pixels of frame k read for its slice."""
    data = volumes(3, n_slices=4)
    frames = [(k, s) for k in range(3) for s in range(4)]
    frames = [frames[i] for i in np.random.default_rng(1).permutation(len(frames))]
    clock = ["100000", "100200", "100730"]  # 0, 120 and 450 s after the bolus
    ds = dataset(EnhancedMRImageStorage, PatientID="P1", StudyInstanceUID=uid("e"), SeriesInstanceUID=uid("e", 1),
                 StudyDate="20200101", ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"], ContrastBolusStartTime="100000")
    ds.SharedFunctionalGroupsSequence = [_item(
        PlaneOrientationSequence=[_item(ImageOrientationPatient=list(AXIAL))],
        PixelMeasuresSequence=[_item(PixelSpacing=[0.8, 0.7], SliceThickness=2.0)],
        PixelValueTransformationSequence=[_item(RescaleSlope=2.0, RescaleIntercept=-10.0, RescaleType="US")])]
    ds.PerFrameFunctionalGroupsSequence = [_item(
        PlanePositionSequence=[_item(ImagePositionPatient=[-20.0, -30.0, 10.0 + 2.0 * s])],
        FrameContentSequence=[_item(TemporalPositionIndex=k + 1, FrameAcquisitionDateTime=f"20200101{clock[k]}.25")])
        for k, s in frames]
    set_pixels(ds, np.stack([data[k, s] for k, s in frames]))
    (tmp_path / "e").mkdir()
    ds.save_as(tmp_path / "e" / "enhanced.dcm", enforce_file_format=True)

    patients, skipped = discover(tmp_path)
    phases = list(patients["P1"]["T0"].phases.values())
    assert skipped == [] and len(phases) == 3
    pre, early, late, how = select_phases(phases)
    assert (how, pre.time_s, early.time_s, late.time_s) == ("AcquisitionTime", 0.25, 120.25, 450.25)
    reads = []
    dcmread = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: reads.append(a) or dcmread(*a, **k))
    for phase, k in ((pre, 0), (early, 1), (late, 2)):
        volume, geometry = read_phase(phase)
        np.testing.assert_array_equal(volume, data[k] * 2.0 - 10.0)
        np.testing.assert_allclose(geometry.spacing, [0.7, 0.8, 2.0])
        assert sorted(s.frame for s in phase.slices) == sorted(f for f, (kf, _) in enumerate(frames) if kf == k)
    assert len(reads) == 3  # the file once per phase
