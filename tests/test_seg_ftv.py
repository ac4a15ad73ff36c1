"""``--ftv-source seg``: the FTV from an I-SPY2-style Analysis Mask DICOM SEG, and the PE fallback."""

import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, SegmentationStorage, generate_uid

from preprocessing.__main__ import _parser
from preprocessing.dicom_index import group_visits, scan_headers
from preprocessing.prepare import Options, process_visit
from preprocessing.seg import (
    AnalysisMaskError,
    analysis_mask_ftv,
    find_analysis_mask,
    read_analysis_mask,
)
from preprocessing.volume import Geometry

# image grid: 6 axial slices of 12 x 12 pixels, 1 mm pixels, 2 mm slices, origin at (0, 0, 0)
IMAGE = Geometry(np.zeros(3), np.array([1.0, 1.0, 2.0]), np.eye(3), (6, 12, 12))
BELOW_PE, BACKGROUND, OUTSIDE_VOI = 0b1, 0b100, 0b1000  # some of the Analysis Mask's exclusion bits


def _save(ds: Dataset, sop_class: str, path):
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "P1", "1.2.3", ds.get("SeriesInstanceUID", generate_uid())
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _sequence(**values) -> list[Dataset]:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return [item]


def write_analysis_mask(path, description="ISPY2: VOLSER: Analysis Mask", orientations=None):
    """A bit-coded 8-bit SEG on half the image's pixel size over image slices 1-4, frames stored
    in shuffled order; FTV (code 0) where image slices 2-4, rows 3-5, columns 2-5 have centres."""
    codes = np.full((4, 24, 24), OUTSIDE_VOI, np.uint8)
    codes[:, 2:20, 2:20] = BELOW_PE | BACKGROUND
    codes[1:, 6:12, 4:11] = 0  # 3 x 6 x 7 voxels of 0.5 x 0.5 x 2 mm = 0.063 mL
    shuffled = [2, 0, 3, 1]
    ds = Dataset()
    ds.Modality, ds.SeriesDescription = "SEG", description
    ds.Rows = ds.Columns = 24
    ds.NumberOfFrames = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SharedFunctionalGroupsSequence = _sequence(
        PixelMeasuresSequence=_sequence(PixelSpacing=[0.5, 0.5], SliceThickness=2.0),
        PlaneOrientationSequence=_sequence(ImageOrientationPatient=[1, 0, 0, 0, 1, 0]))
    ds.PerFrameFunctionalGroupsSequence = []
    for k, frame in enumerate(shuffled):
        (item,) = _sequence(PlanePositionSequence=_sequence(ImagePositionPatient=[0.0, 0.0, 2.0 * (frame + 1)]),
                            SegmentIdentificationSequence=_sequence(ReferencedSegmentNumber=1))
        if orientations:
            item.PlaneOrientationSequence = _sequence(ImageOrientationPatient=orientations[k])
        ds.PerFrameFunctionalGroupsSequence.append(item)
    ds.PixelData = codes[shuffled].tobytes()
    return _save(ds, SegmentationStorage, path)


def test_decodes_the_bit_codes_on_the_mask_grid(tmp_path):
    ftv, grid = read_analysis_mask(write_analysis_mask(tmp_path / "mask.dcm"))
    assert ftv.shape == (4, 24, 24) and ftv.dtype == bool
    np.testing.assert_allclose(grid.spacing, [0.5, 0.5, 2.0])
    np.testing.assert_allclose(grid.origin, [0.0, 0.0, 2.0])  # frames ordered along the normal
    assert ftv[1:, 6:12, 4:11].all() and ftv.sum() == 3 * 6 * 7


def test_ftv_in_ml_on_the_mask_grid_and_resampled_onto_the_image(tmp_path):
    mask_path = write_analysis_mask(tmp_path / "mask.dcm")
    other_seg = write_analysis_mask(tmp_path / "other.dcm", description="PE2 segmentation")
    on_image, ftv_ml = analysis_mask_ftv([other_seg, mask_path], IMAGE)
    assert ftv_ml == pytest.approx(3 * 6 * 7 * 0.5 * 0.5 * 2 / 1000)  # not 3 * 3 * 4 image voxels
    expected = np.zeros(IMAGE.shape, bool)
    expected[2:5, 3:6, 2:6] = True  # image pixel centres (1 mm) fall on mask pixel centres (0.5 mm)
    np.testing.assert_array_equal(on_image, expected)


def test_study_without_analysis_mask_and_inconsistent_masks(tmp_path):
    assert find_analysis_mask([write_analysis_mask(tmp_path / "pe.dcm", description="PE2")]) is None
    assert analysis_mask_ftv([], IMAGE) is None
    tilted = [[1, 0, 0, 0, 1, 0]] * 3 + [[1, 0, 0, 0, 0.8, 0.6]]
    with pytest.raises(AnalysisMaskError, match="^Analysis Mask: frames do not share one orientation$"):
        read_analysis_mask(write_analysis_mask(tmp_path / "tilted.dcm", orientations=tilted))
    two = [write_analysis_mask(tmp_path / f"{k}.dcm") for k in range(2)]
    with pytest.raises(AnalysisMaskError, match="^Analysis Mask: 2 in the study, expected one$"):
        find_analysis_mask(two)


def write_dce(folder) -> list[str]:
    """Three phases (one series each, TriggerTime 0, 150, 450 s) on the ``IMAGE`` grid: uniform
    tissue with a 2 x 2 x 2 voxel enhancing lesion away from the Analysis Mask's FTV."""
    paths = []
    for phase, (trigger_ms, lesion) in enumerate([(0, 100), (150_000, 300), (450_000, 250)]):
        series = generate_uid()
        for k in range(IMAGE.shape[0]):
            pixels = np.full(IMAGE.shape[1:], 100, np.uint16)
            if k in (3, 4):
                pixels[8:10, 8:10] = lesion
            ds = Dataset()
            ds.Modality, ds.SeriesInstanceUID, ds.TriggerTime = "MR", series, trigger_ms
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * k], [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], *IMAGE.shape[1:]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = pixels.tobytes()
            paths.append(_save(ds, MRImageStorage, folder / f"{phase}_{k}.dcm"))
    return paths


def _visit(folder):
    headers, skipped = scan_headers(sorted(folder.glob("*.dcm")))
    assert not skipped
    patients, _ = group_visits(headers)
    return patients["P1"]["T0"]


def test_sidecar_records_the_ftv_source(tmp_path):
    write_dce(tmp_path)
    visit = _visit(tmp_path)
    options = {"size": 8, "min_component_ml": 0.01}
    pe = process_visit(visit, tmp_path / "pe", Options(**options), None)
    assert pe["ftv_source"] == "pe" and pe["ftv_ml"] == pytest.approx(8 * 0.002)
    fallback = process_visit(visit, tmp_path / "fallback", Options(**options, ftv_source="seg"), None)
    assert fallback["ftv_source"] == "pe (no Analysis Mask)" and fallback["ftv_ml"] == pe["ftv_ml"]
    assert fallback["centre_mm"] == pe["centre_mm"] == [8.5, 8.5, 7.0]
    write_analysis_mask(tmp_path / "mask.dcm")  # same study: discovery lists it in visit.segs
    seg = process_visit(_visit(tmp_path), tmp_path / "seg", Options(**options, ftv_source="seg"), None)
    assert seg["ftv_source"] == "seg" and seg["ftv_ml"] == pytest.approx(0.063)
    assert seg["centre_mm"] == [3.5, 4.0, 6.0]  # centroid of image columns 2-5, rows 3-5, slices 2-4
    assert nib.load(tmp_path / "seg.nii.gz").get_fdata()[..., 2].sum() > 0  # the FTV channel
    assert json.loads((tmp_path / "seg.json").read_text())["options"]["ftv_source"] == "seg"


def test_ftv_source_option_and_command_line():
    with pytest.raises(ValueError, match="ftv_source"):
        Options(ftv_source="manual")
    parse = _parser().parse_args
    assert parse(["prepare", "--raw", "r", "--out", "o"]).ftv_source == "pe"
    assert parse(["prepare", "--raw", "r", "--out", "o", "--ftv-source", "seg"]).ftv_source == "seg"
    with pytest.raises(SystemExit):
        parse(["prepare", "--raw", "r", "--out", "o", "--ftv-source", "manual"])
