"""``python -m preprocessing synth --layout ispy2``: a synthetic cohort laid out as TCIA publishes I-SPY2.

The patients, their pCR and the oracle are those of ``preprocessing.cohort.sample_cohort`` and the
images are rendered by ``preprocessing.phantom`` as in ``synth.py``; only the packaging differs. It is
written from a description of the published collection, not from what ``prepare`` expects, so that
tests can catch the reader's wrong assumptions.

Layout (``RAW`` = ``--out``)::

    RAW/ISPY2/ISPY2-xxxxxx/MM-DD-YYYY-NA-ISPY2MRIT0-nnnnn/<SeriesNumber>.000000-<description>-nnnnn/1-NNN.dcm
    RAW/metadata.csv          NBIA-Data-Retriever-like series list (contains original UIDs)
    RAW/ISPY2_clinical.xlsx   the published clinical workbook (sheet 1: data, sheet 2: dictionary)
    RAW/truth.csv             never read by a model: id, site, tumour_ml_T0..T3, ftv_ml_T0..T3, ...
    RAW/phi_values.json       every value a prepared output must never contain (+ the UID root)

DICOM, as published:

* PatientID ``ISPY2-xxxxxx`` (6 digits), PatientName ``ISPY2-xxxxxx^Site-yyy``; no
  ClinicalTrialSubjectID / TimePointID / SiteID. The visit is only in StudyDescription
  (``ISPY2_MRI_T0``..``T3``); StudyDates are shifted, and for every fifth patient (index 2, 7, ...)
  T1's date falls after T2's (``date_order_broken`` in truth.csv), so date order is wrong there.
* De-identification placeholders filled with fake PHI-like values: PatientBirthDate (shifted, or
  empty at some sites), AccessionNumber; they, the names and all original UIDs are listed in
  ``phi_values.json``.
* Per study: ONE DCE series holding every phase (pre + 4..7 post), SeriesDescription
  ``ISPY2: VOLSER: uni-lateral cropped: original DCE`` (sagittal, one breast) or
  ``ISPY2: VOLSER: bi-lateral: original DCE`` (axial, both breasts, heart and vessels),
  ImageType ORIGINAL\\PRIMARY\\M, AcquisitionTime/ContentTime frozen (1 s apart between phases)
  while ContrastBolusStartTime is present; all phases' files in one folder with opaque names.
  TriggerTime, where present, is the phase's time in ms from the start of the series (GE-like;
  pre-contrast = 0; injection at the end of the pre-contrast phase + 15 s).
* Derived ``…: PE2`` (early percent enhancement) and ``…: SER`` series (DERIVED\\PRIMARY, MR
  Image Storage, the DCE grid, stored values with RescaleSlope/Intercept), a 3-plane localizer
  (ORIGINAL\\PRIMARY\\LOCALIZER, three orientations) and the ``…: Analysis Mask`` SEG.
* Transfer syntaxes vary by site and visit (``PROTOCOLS``); one site writes Enhanced MR Image
  Storage (one multi-frame file, FrameContentSequence TemporalPositionIndex, PlanePositionSequence).

Sites (``PROTOCOLS``; site k uses protocol k mod 5; syntaxes alternate over the visits)::

    site vendor  field             phases TriggerTime phase index            storage      syntaxes
    101  GE      uni-lat. sagittal 1+5   ms          TemporalPositionIdent. single-frame Explicit LE / JPEG SV1*
    214  SIEMENS bi-lat. axial     1+4   -           TemporalPositionIdent. single-frame Implicit LE / JPEG-LS
    335  GE      uni-lat. sagittal 1+7   ms          none (slice-major no.) single-frame RLE / Deflated Explicit LE
    487  Philips bi-lat. axial     1+6   -           TemporalPositionIndex  Enhanced MR  JPEG 2000 / Explicit LE
    552  GE      bi-lat. axial     1+5   ms          TemporalPositionIdent. single-frame JPEG-LS / JPEG SV1*

    (all compressed syntaxes lossless; JPEG SV1 = JPEG Lossless, Non-Hierarchical, First-Order
    Prediction, Selection Value 1)
    * JPEG Lossless SV1 is encoded with GDCM (PyPI ``python-gdcm``) when it is installed; pydicom
      has no encoder for it. Without GDCM those studies fall back to Explicit VR Little Endian.

Sites also differ in pixel size (2.0-2.5 mm), slice thickness (4-5 mm), gain, noise, field
strength and whether PatientBirthDate is filled. The Enhanced MR file's frames carry
FrameAcquisitionDateTime (frozen like AcquisitionTime) and TemporalPositionSequence >
TemporalPositionTimeOffset (s from the start of the series). Series numbers: localizer 1, DCE
``n`` (site-specific), SER ``n*10000+1000``, PE2 ``n*10000+1001``, Analysis Mask ``n*10000+2001``;
derived series carry the DCE's field prefix (``bi-lateral: PE2`` in bilateral studies).

Analysis Mask: TCIA's mask is an 8-bit image on the DCE grid in which 0 marks a voxel of the
functional tumour volume (FTV) and each nonzero bit tells why a voxel was excluded (``MASK_BITS``:
1 below the PE threshold, 2 removed by connectivity, 4 background, 8 outside the manual VOI,
16 OMIT region; several bits may be set). A BINARY SEG cannot hold bit codes, so the mask is a
FRACTIONAL SEG (Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.4) with MaximumFractionalValue
255 whose stored 8-bit values ARE the bit codes: highdicom writes that faithfully (it stores
``round(fraction * 255)``, and fractions ``code / 255`` are passed), with PerFrameFunctional
Groups PlanePositionSequence and Shared PlaneOrientation/PixelMeasures on the DCE grid, one frame
per DCE slice, empty frames kept (highdicom orders the frames itself, so match them to DCE slices
by PlanePositionSequence, not by index). Read it as stored values (``pixel_array``, or highdicom
with ``rescale_fractional=False``), never as probabilities.

FTV truth: voxels of the phantom's tumour (fraction >= 0.5) whose early percent enhancement,
computed from the stored DCE values of the same render (noisy), is >= 70 % and whose
pre-contrast value is above the background threshold; exactly the mask's zero voxels.
``ftv_ml_*`` in truth.csv is their volume, ``tumour_ml_*`` the phantom's true tumour volume.

Left out: missing visits, T2w/DWI/other series, private tags, MR-specific per-frame groups beyond
those named above, the PE/SER maps' own thresholding, and lossy syntaxes.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from .atomic import atomic_path, atomic_write_csv, atomic_write_json
from .cohort import VISIT_WEEKS, VISITS, agent_column, sample_cohort
from .parallel import parallel_map
from .phantom import CHEST_FOV_MM, FOV_MM, Anatomy, render_phases, tissue_fractions
from .dicom_writing import dicom_uid, new_dataset
from .synth import FULL_RESOLUTION, _clock, field_grid

COLLECTION = "ISPY2"
WORKBOOK = "ISPY2_clinical.xlsx"
EARLY_S, LATE_S = 150.0, 450.0  # I-SPY early and late post-contrast times
PE_THRESHOLD = 70.0  # percent: the FTV's early-enhancement threshold
BACKGROUND_FRACTION = 0.4  # background: pre-contrast below this fraction of its 98th percentile
INJECTION_DELAY_S = 15.0  # injection after the end of the pre-contrast phase
MASK_BITS = {"below_pe_threshold": 1, "connectivity": 2, "background": 4, "outside_voi": 8, "omit": 16}
UID_ROOT = PYDICOM_ROOT_UID  # every original UID written here starts with it

# agent names as the trial publishes them, in the order they appear in ``Arm``
PUBLISHED_AGENT = {
    "Paclitaxel": "Paclitaxel", "ABT 888": "Veliparib (ABT 888)", "Carboplatin": "Carboplatin",
    "AMG 386": "AMG 386", "Ganetespib": "Ganetespib", "Ganitumab": "Ganitumab", "MK-2206": "MK-2206",
    "Neratinib": "Neratinib", "Pembrolizumab": "Pembrolizumab", "T-DM1": "T-DM1",
    "Pertuzumab": "Pertuzumab", "Trastuzumab": "Trastuzumab",
}
WORKBOOK_COLUMNS = ("Patient_ID", "Arm", "HR", "HER2", "MP", "pCR", "Age_at_Screening", "Race", "ethnicity")


@dataclass(frozen=True)
class SiteProtocol:
    """How one I-SPY2 site acquired and stored its DCE-MRI."""

    number: int  # the 3-digit site number in PatientName
    manufacturer: str
    bilateral: bool  # axial bilateral field (else sagittal, one breast, cropped)
    pixel_mm: float
    slice_mm: float
    n_post: int
    phase_interval_s: float
    trigger_time: bool  # TriggerTime (ms from the start of the series) per phase
    temporal_position: bool  # TemporalPositionIdentifier (else phases only by repeated positions)
    enhanced: bool  # Enhanced MR Image Storage: one multi-frame file per DCE series
    syntaxes: tuple[str, ...]  # transfer syntax of visit v: syntaxes[v % len]
    gain: float
    noise_sd: float
    birth_date: bool  # a shifted PatientBirthDate (else the placeholder is left empty)
    dce_series_number: int


PROTOCOLS = (
    SiteProtocol(101, "GE MEDICAL SYSTEMS", False, 2.0, 4.0, 5, 100.0, True, True, False,
                 (ExplicitVRLittleEndian, JPEGLosslessSV1), 1.0, 6.0, True, 8),
    SiteProtocol(214, "SIEMENS", True, 2.5, 4.0, 4, 120.0, False, True, False,
                 (ImplicitVRLittleEndian, JPEGLSLossless), 0.8, 8.0, False, 12),
    SiteProtocol(335, "GE MEDICAL SYSTEMS", False, 2.2, 5.0, 7, 70.0, True, False, False,
                 (RLELossless, DeflatedExplicitVRLittleEndian), 1.2, 9.0, True, 5),
    SiteProtocol(487, "Philips Medical Systems", True, 2.5, 5.0, 6, 85.0, False, True, True,
                 (JPEG2000Lossless, ExplicitVRLittleEndian), 1.1, 7.0, False, 6),
    SiteProtocol(552, "GE MEDICAL SYSTEMS", True, 2.5, 4.0, 5, 100.0, True, True, False,
                 (JPEGLSLossless, JPEGLosslessSV1), 0.9, 6.0, True, 7),
)


def gdcm_available() -> bool:
    """Whether JPEG Lossless SV1 can be encoded here (GDCM from PyPI ``python-gdcm``)."""
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def encodable(syntax: str) -> str:
    """The syntax a study asked for ``syntax`` is written in (SV1 falls back without GDCM)."""
    if syntax == JPEGLosslessSV1 and not gdcm_available():
        return ExplicitVRLittleEndian
    return syntax


def site_protocol(k: int, resolution: str = "demo") -> SiteProtocol:
    """Protocol of site ``k``: the templates in turn, with new site numbers beyond the fifth."""
    protocol = PROTOCOLS[k % len(PROTOCOLS)]
    if k >= len(PROTOCOLS):
        protocol = replace(protocol, number=600 + k)
    if resolution == "full":
        protocol = replace(protocol, pixel_mm=protocol.pixel_mm * FULL_RESOLUTION["pixel_mm"],
                           slice_mm=protocol.slice_mm * FULL_RESOLUTION["slice_mm"])
    return protocol


def phase_times(protocol: SiteProtocol) -> tuple[np.ndarray, np.ndarray]:
    """Seconds from the start of the series and seconds after injection of each phase's centre."""
    d = protocol.phase_interval_s
    from_start = d * (np.arange(protocol.n_post + 1) + 0.5)
    return from_start, from_start - (d + INJECTION_DELAY_S)


def protocol_grid(protocol: SiteProtocol):
    """The acquisition grid of a site: axial over both breasts and the chest, else sagittal over
    the tumour's breast."""
    if protocol.bilateral:
        return field_grid("axial", protocol.pixel_mm, protocol.slice_mm, CHEST_FOV_MM)
    return field_grid("sagittal", protocol.pixel_mm, protocol.slice_mm, FOV_MM)


# ---------------------------------------------------------------- kinetic maps and the mask


def kinetic_maps(pre: np.ndarray, early: np.ndarray, late: np.ndarray):
    """Background mask, early percent enhancement and SER (0 in the background)."""
    pre, early, late = (np.asarray(a, dtype=float) for a in (pre, early, late))
    background = pre < BACKGROUND_FRACTION * np.percentile(pre, 98)
    with np.errstate(divide="ignore", invalid="ignore"):
        pe = np.where(background, 0.0, 100.0 * (early - pre) / np.maximum(pre, 1.0))
        ser = np.where(background | (late - pre <= 0), 0.0, (early - pre) / (late - pre))
    return background, pe, np.clip(np.nan_to_num(ser), 0.0, 10.0)


def analysis_mask(tumour: np.ndarray, background: np.ndarray, pe: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """TCIA-style bit-coded 8-bit mask (0 = in the FTV) and the FTV (bool) it encodes.

    ``tumour`` is the phantom's tumour (bool). The manual VOI is the tumour's bounding box plus
    3 voxels; enhancing voxels inside it that are not tumour are flagged as removed by
    connectivity; half of the studies have an OMIT box in a corner of the VOI (it never removes
    FTV voxels, so the mask's zeros stay the truth).
    """
    below = pe < PE_THRESHOLD
    ftv = tumour & ~below & ~background
    voi = np.zeros(tumour.shape, bool)
    index = np.argwhere(tumour)
    centre = np.array(tumour.shape) // 2 if len(index) == 0 else index.mean(axis=0).astype(int)
    lo = (index.min(axis=0) if len(index) else centre) - 3
    hi = (index.max(axis=0) if len(index) else centre) + 4
    lo, hi = np.maximum(lo, 0), np.minimum(hi, tumour.shape)
    voi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    mask = np.zeros(tumour.shape, np.uint8)
    mask[below] |= MASK_BITS["below_pe_threshold"]
    mask[background] |= MASK_BITS["background"]
    mask[~voi] |= MASK_BITS["outside_voi"]
    mask[voi & ~tumour & ~below & ~background] |= MASK_BITS["connectivity"]
    if rng.random() < 0.5:
        omit = np.zeros(tumour.shape, bool)
        omit[lo[0]:lo[0] + 2, lo[1]:lo[1] + 3, lo[2]:lo[2] + 3] = True
        mask[omit & ~ftv] |= MASK_BITS["omit"]
    assert np.array_equal(mask == 0, ftv)
    return mask, ftv


# ---------------------------------------------------------------- DICOM writing


def _encode_sv1(frame: np.ndarray) -> bytes:
    """One uint16 frame as JPEG Lossless, Non-Hierarchical, First-Order Prediction (SV1), by GDCM."""
    import gdcm

    writer = gdcm.ImageWriter()  # gdcm needs the image to belong to a live writer
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((frame.shape[1], frame.shape[0], 1))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, 16, 15, 0))
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue(np.ascontiguousarray(frame, dtype="<u2").tobytes())
    image.SetDataElement(element)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(image)
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG Lossless SV1")
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    return b"".join(fragments.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
                    for i in range(fragments.GetNumberOfFragments()))


def encode_pixels(ds: Dataset, stored: np.ndarray, syntax: str) -> None:
    """Set ``ds``'s Pixel Data to ``stored`` (uint16, (rows, cols) or (frames, rows, cols)) in ``syntax``."""
    syntax = encodable(syntax)
    stored = np.ascontiguousarray(stored, dtype=np.uint16)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = stored.tobytes()
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax  # pydicom encodes (and deflates) on writing
    elif syntax == JPEGLosslessSV1:
        frames = stored.reshape(-1, *stored.shape[-2:])
        ds.PixelData = encapsulate([_encode_sv1(f) for f in frames])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    else:
        ds.compress(syntax, stored, generate_instance_uid=False)


def _header(sop_class: str, study: dict, series: dict, protocol: SiteProtocol) -> Dataset:
    """Patient, study, series and equipment elements shared by a series' files."""
    ds = new_dataset(sop_class)
    ds.Modality = "MR"
    ds.Manufacturer = protocol.manufacturer
    ds.BodyPartExamined = "BREAST"
    ds.PatientSex = "F"
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    for key, value in {**study, **series}.items():
        setattr(ds, key, value)
    return ds


def _image_pixels(ds: Dataset, rows: int, cols: int) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0


def _mr_acquisition(ds: Dataset, protocol: SiteProtocol) -> None:
    ds.MagneticFieldStrength = 1.5 if protocol.manufacturer.startswith("GE") else 3.0
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "3D"
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 5.2, 2.4, 10.0


def _save(ds: Dataset, path: Path) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _folder_name(text: str) -> str:
    """NBIA-like folder text: descriptions without punctuation."""
    return re.sub(r"\s+", " ", re.sub(r"[^A-Za-z0-9 \-]", " ", text)).strip()


class SeriesWriter:
    """Writes the series of one study under NBIA-like folders; collects metadata.csv rows."""

    def __init__(self, root: Path, study: dict, study_frame: str, protocol: SiteProtocol,
                 rng: np.random.Generator):
        self.root, self.study, self.study_frame, self.protocol, self.rng = root, study, study_frame, protocol, rng
        self.rows: list[dict] = []
        self.series_uids: list[str] = []

    def folder(self, number: int, description: str, uid: str) -> Path:
        return self.root / f"{number}.000000-{_folder_name(description)}-{uid[-5:]}"

    def names(self, n: int) -> list[str]:
        """Opaque file names, numbered in an order unrelated to position or phase."""
        width = max(3, len(str(n)))
        return [f"1-{k + 1:0{width}d}.dcm" for k in self.rng.permutation(n)]

    def record(self, ds: Dataset, folder: Path, n_files: int, sop_class_name: str) -> None:
        self.series_uids.append(str(ds.SeriesInstanceUID))
        self.rows.append({
            "Series UID": str(ds.SeriesInstanceUID), "Collection": COLLECTION, "3rd Party Analysis": "NO",
            "Subject ID": str(ds.PatientID), "Study UID": str(ds.StudyInstanceUID),
            "Study Description": str(ds.StudyDescription), "Study Date": str(ds.StudyDate),
            "Series Description": str(ds.SeriesDescription), "Manufacturer": self.protocol.manufacturer,
            "Modality": str(ds.Modality), "SOP Class Name": sop_class_name, "SOP Class UID": str(ds.SOPClassUID),
            "Number of Images": n_files,
            "File Size": sum(p.stat().st_size for p in folder.iterdir()),
            "File Location": "./" + folder.relative_to(self.root.parents[2]).as_posix(),
        })


def _write_single_frames(writer: SeriesWriter, ds: Dataset, stored: np.ndarray, positions: np.ndarray,
                         uid_parts: tuple, syntax: str, instance_of=None, per_slice=None) -> int:
    """One file per slice of ``stored`` (frames, rows, cols) at ``positions`` (frame -> position)."""
    folder = writer.folder(ds.SeriesNumber, ds.SeriesDescription, ds.SeriesInstanceUID)
    names = writer.names(len(stored))
    for f in range(len(stored)):
        ds.ImagePositionPatient = [round(float(c), 4) for c in positions[f]]
        ds.InstanceNumber = instance_of(f) if instance_of else f + 1
        ds.SOPInstanceUID = dicom_uid(*uid_parts, f)
        if per_slice:
            per_slice(ds, f)
        encode_pixels(ds, stored[f], syntax)
        _save(ds, folder / names[f])
    writer.record(ds, folder, len(stored), "MR Image Storage")
    return len(stored)


def _write_dce(writer: SeriesWriter, job: dict, visit: str, stored: np.ndarray, positions: np.ndarray,
               orientation, syntax: str, start_clock: float, bolus_clock: float) -> tuple[int, list[Dataset]]:
    """The DCE series; returns the number of files and the pre-contrast slices' datasets (SEG sources)."""
    protocol, seed = job["protocol"], job["seed"]
    n_phases, n_slices = stored.shape[:2]
    from_start, _ = phase_times(protocol)
    laterality = "bi-lateral" if protocol.bilateral else "uni-lateral cropped"
    series = {
        "SeriesInstanceUID": dicom_uid(seed, visit, "dce"), "SeriesNumber": protocol.dce_series_number,
        "SeriesDescription": f"ISPY2: VOLSER: {laterality}: original DCE",
        "SeriesTime": _clock(start_clock), "ContrastBolusAgent": "Gd-DTPA",
        "ContrastBolusStartTime": _clock(bolus_clock), "ContrastBolusRoute": "IV",
    }
    if protocol.enhanced:
        ds = _enhanced_dce(writer, job, visit, series, stored, positions, orientation, start_clock, from_start)
        folder = writer.folder(ds.SeriesNumber, ds.SeriesDescription, ds.SeriesInstanceUID)
        encode_pixels(ds, stored.reshape(-1, *stored.shape[2:]), syntax)
        _save(ds, folder / writer.names(1)[0])
        writer.record(ds, folder, 1, "Enhanced MR Image Storage")
        return 1, [ds]
    ds = _header(MRImageStorage, writer.study, series, protocol)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    _mr_acquisition(ds, protocol)
    ds.ImageOrientationPatient = [float(c) for c in orientation]
    ds.PixelSpacing = [protocol.pixel_mm, protocol.pixel_mm]
    ds.SliceThickness = ds.SpacingBetweenSlices = protocol.slice_mm
    ds.FrameOfReferenceUID = writer.study_frame
    _image_pixels(ds, *stored.shape[2:])
    if protocol.temporal_position:
        ds.NumberOfTemporalPositions = n_phases

    def per_slice(d: Dataset, f: int) -> None:
        p = f // n_slices
        if protocol.temporal_position:
            d.TemporalPositionIdentifier = p + 1
        if protocol.trigger_time:
            d.TriggerTime = round(float(from_start[p] - from_start[0]) * 1000.0, 1)
        d.AcquisitionTime = _clock(start_clock + p)  # frozen: phases only seconds apart
        d.ContentTime = _clock(start_clock + p + 2)

    if protocol.temporal_position:
        instance_of = lambda f: f + 1  # noqa: E731  phase-major numbering
    else:  # slice-major numbering: all phases of a location, then the next location
        instance_of = lambda f: (f % n_slices) * n_phases + f // n_slices + 1  # noqa: E731
    all_positions = np.tile(positions, (n_phases, 1))
    n = _write_single_frames(writer, ds, stored.reshape(-1, *stored.shape[2:]), all_positions,
                             (seed, visit, "dce"), syntax, instance_of, per_slice)
    # SEG sources: the pre-contrast slices' headers (no pixel data needed)
    template = copy.deepcopy(ds)
    for keyword in ("PixelData", "TemporalPositionIdentifier", "TriggerTime"):
        if keyword in template:
            delattr(template, keyword)
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sources = []
    for k in range(n_slices):
        src = copy.deepcopy(template)
        src.ImagePositionPatient = [round(float(c), 4) for c in positions[k]]
        src.SOPInstanceUID = dicom_uid(seed, visit, "dce", k)
        src.InstanceNumber = instance_of(k)
        sources.append(src)
    return n, sources


def _enhanced_dce(writer: SeriesWriter, job: dict, visit: str, series: dict, stored: np.ndarray,
                  positions: np.ndarray, orientation, start_clock: float, from_start: np.ndarray) -> Dataset:
    """Enhanced MR Image Storage: one multi-frame dataset, phase-major frames."""
    protocol, seed = job["protocol"], job["seed"]
    n_phases, n_slices = stored.shape[:2]
    ds = _header(EnhancedMRImageStorage, writer.study, series, protocol)
    ds.SOPInstanceUID = dicom_uid(seed, visit, "dce", "enhanced")
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.FrameOfReferenceUID = writer.study_frame
    ds.AcquisitionDateTime = writer.study["StudyDate"] + _clock(start_clock)
    ds.ContentDate, ds.ContentTime = writer.study["StudyDate"], _clock(start_clock + 2)
    ds.ContentQualification = "PRODUCT"
    ds.NumberOfTemporalPositions = n_phases
    ds.MagneticFieldStrength = 3.0
    ds.ImageComments = "DCE"
    _image_pixels(ds, *stored.shape[2:])
    ds.NumberOfFrames = n_phases * n_slices
    dim_uid = dicom_uid(seed, visit, "dimension")
    ds.DimensionOrganizationSequence = Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = dim_uid
    dims = []
    for pointer in (0x00209128, 0x00209057):  # TemporalPositionIndex, InStackPositionNumber
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
        dims.append(item)
    ds.DimensionIndexSequence = Sequence(dims)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [protocol.pixel_mm, protocol.pixel_mm]
    measures.SliceThickness = measures.SpacingBetweenSlices = protocol.slice_mm
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = [float(c) for c in orientation]
    shared.PlaneOrientationSequence = Sequence([plane])
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    frame_type.PixelPresentation, frame_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    frame_type.VolumeBasedCalculationTechnique, frame_type.ComplexImageComponent = "NONE", "MAGNITUDE"
    frame_type.AcquisitionContrast = "T1"
    shared.MRImageFrameTypeSequence = Sequence([frame_type])
    transform = Dataset()
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = 0, 1, "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for p in range(n_phases):
        for k in range(n_slices):
            item = Dataset()
            content = Dataset()
            content.FrameAcquisitionDateTime = writer.study["StudyDate"] + _clock(start_clock + p)  # frozen
            content.FrameReferenceDateTime = content.FrameAcquisitionDateTime
            content.FrameAcquisitionDuration = round(protocol.phase_interval_s * 1000.0, 1)
            content.StackID = "1"
            content.InStackPositionNumber = k + 1
            content.TemporalPositionIndex = p + 1
            content.DimensionIndexValues = [p + 1, k + 1]
            item.FrameContentSequence = Sequence([content])
            position = Dataset()
            position.ImagePositionPatient = [round(float(c), 4) for c in positions[k]]
            item.PlanePositionSequence = Sequence([position])
            temporal = Dataset()
            temporal.TemporalPositionTimeOffset = round(float(from_start[p] - from_start[0]), 3)
            item.TemporalPositionSequence = Sequence([temporal])
            frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    return ds


def _write_map(writer: SeriesWriter, job: dict, visit: str, name: str, number: int, values: np.ndarray,
               scale: tuple[float, float], positions: np.ndarray, orientation, syntax: str) -> int:
    """A derived kinetic map on the DCE grid (stored = (value - intercept) / slope)."""
    protocol, seed = job["protocol"], job["seed"]
    laterality = "bi-lateral" if protocol.bilateral else "uni-lateral cropped"
    series = {"SeriesInstanceUID": dicom_uid(seed, visit, name), "SeriesNumber": number,
              "SeriesDescription": f"ISPY2: VOLSER: {laterality}: {name}"}
    ds = _header(MRImageStorage, writer.study, series, protocol)
    ds.ImageType = ["DERIVED", "PRIMARY", name]
    ds.FrameOfReferenceUID = writer.study_frame
    ds.ImageOrientationPatient = [float(c) for c in orientation]
    ds.PixelSpacing = [protocol.pixel_mm, protocol.pixel_mm]
    ds.SliceThickness = ds.SpacingBetweenSlices = protocol.slice_mm
    slope, intercept = scale
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    _image_pixels(ds, *values.shape[1:])
    stored = np.clip(np.round((values - intercept) / slope), 0, 65535).astype(np.uint16)
    return _write_single_frames(writer, ds, stored, positions, (seed, visit, name), syntax)


def _write_localizer(writer: SeriesWriter, job: dict, visit: str, anatomy: Anatomy, shift: np.ndarray,
                     syntax: str, rng: np.random.Generator) -> int:
    """Three orthogonal pre-contrast slices through the field's centre, one series."""
    protocol, seed = job["protocol"], job["seed"]
    fov = CHEST_FOV_MM if protocol.bilateral else FOV_MM
    centre = fov.mean(axis=1)
    pixel, n = 4.0, 80
    planes = [((1.0, 0, 0), (0, 1.0, 0)), ((0, 1.0, 0), (0, 0, -1.0)), ((1.0, 0, 0), (0, 0, -1.0))]
    offsets = (np.arange(n) - (n - 1) / 2) * pixel
    points, corners = [], []
    for row_dir, col_dir in planes:
        row_dir, col_dir = np.array(row_dir), np.array(col_dir)
        pts = centre + offsets[:, None, None] * col_dir + offsets[None, :, None] * row_dir
        points.append(pts)
        corners.append(pts[0, 0])
    image = render_phases(anatomy, np.stack(points) - shift, pixel, 0.0, [-30.0], protocol.gain,
                          protocol.noise_sd, rng)[0]
    series = {"SeriesInstanceUID": dicom_uid(seed, visit, "localizer"), "SeriesNumber": 1,
              "SeriesDescription": "3-Plane Loc"}
    ds = _header(MRImageStorage, writer.study, series, protocol)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    _mr_acquisition(ds, protocol)
    ds.FrameOfReferenceUID = writer.study_frame
    ds.PixelSpacing = [pixel, pixel]
    ds.SliceThickness = 8.0
    _image_pixels(ds, n, n)

    def per_slice(d: Dataset, f: int) -> None:
        d.ImageOrientationPatient = [float(c) for c in np.concatenate(planes[f])]

    stored = np.clip(np.round(image), 0, 65535).astype(np.uint16)
    return _write_single_frames(writer, ds, stored, np.array(corners), (seed, visit, "localizer"), syntax,
                                per_slice=per_slice)


def _write_seg(writer: SeriesWriter, job: dict, visit: str, mask: np.ndarray, sources: list[Dataset],
               positions: np.ndarray, orientation) -> int:
    """The Analysis Mask as a FRACTIONAL SEG whose stored 8-bit values are the bit codes."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    protocol, seed = job["protocol"], job["seed"]
    laterality = "bi-lateral" if protocol.bilateral else "uni-lateral cropped"
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Analysis Mask",
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="VOLSER", version="1.0", family=codes.cid7162.HistogramAnalysis),
    )
    measures = hd.PixelMeasuresSequence(pixel_spacing=[protocol.pixel_mm, protocol.pixel_mm],
                                        slice_thickness=protocol.slice_mm,
                                        spacing_between_slices=protocol.slice_mm)
    plane = hd.PlaneOrientationSequence(coordinate_system="PATIENT",
                                        image_orientation=[float(c) for c in orientation])
    plane_positions = [hd.PlanePositionSequence(coordinate_system="PATIENT",
                                                image_position=[round(float(c), 4) for c in p])
                       for p in positions]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.float32) / 255.0,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY, max_fractional_value=255,
        segment_descriptions=[description], series_instance_uid=dicom_uid(seed, visit, "mask"),
        series_number=protocol.dce_series_number * 10000 + 2001, sop_instance_uid=dicom_uid(seed, visit, "mask", 0),
        instance_number=1, manufacturer="UCSF BIRP", manufacturer_model_name="AEGIS VOLSER",
        software_versions="1.0", device_serial_number="0", content_label="ANALYSIS_MASK",
        content_description="0=FTV; 1 PE<70%, 2 connectivity, 4 bkg, 8 outside VOI, 16 OMIT",
        pixel_measures=measures, plane_orientation=plane, plane_positions=plane_positions,
        omit_empty_frames=False,
    )
    seg.SegmentSequence[0].SegmentDescription = (
        "Stored 8-bit values are bit codes, not fractions: 0 = voxel in the functional tumour volume; "
        + ", ".join(f"{bit} = {name.replace('_', ' ')}" for name, bit in MASK_BITS.items()))
    seg.SeriesDescription = f"ISPY2: VOLSER: {laterality}: Analysis Mask"
    seg.StudyDescription = writer.study["StudyDescription"]
    seg.SeriesDate = writer.study["StudyDate"]
    folder = writer.folder(seg.SeriesNumber, seg.SeriesDescription, seg.SeriesInstanceUID)
    _save(seg, folder / writer.names(1)[0])
    writer.record(seg, folder, 1, "Segmentation Storage")
    return 1


# ---------------------------------------------------------------- one patient


def write_patient(job: dict) -> dict:
    """Render and write all studies of one patient; returns files, truth volumes, PHI values, rows."""
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    for chatty in ("highdicom", "openjpeg"):  # INFO lines per SEG frame / per encoded tile otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    patient, protocol = job["patient"], job["protocol"]
    rng = np.random.default_rng(job["seed"])
    anatomy = Anatomy.sample(patient["y_T0"], rng, bilateral=protocol.bilateral)
    shifts = rng.uniform(-4, 4, size=(len(VISITS), 3))
    cumulative = np.cumsum([0.0, patient["y_T1"], patient["y_T2"], patient["y_T3"]])
    points, positions, orientation = protocol_grid(protocol)
    voxel_ml = protocol.pixel_mm ** 2 * protocol.slice_mm / 1000.0
    from_start, after_injection = phase_times(protocol)
    early = int(np.argmin(np.abs(after_injection - EARLY_S)))
    late = int(np.argmin(np.abs(after_injection - LATE_S)))

    baseline = dt.date(2010, 3, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))  # shifted dates
    dates = [baseline + dt.timedelta(weeks=VISIT_WEEKS[v], days=int(rng.integers(-3, 4)))
             for v in range(len(VISITS))]
    if job["date_order_broken"]:
        dates[1] = dates[2] + dt.timedelta(days=int(rng.integers(3, 20)))  # T1 dated after T2
    pid = job["patient_id"]
    patient_name = f"{pid}^Site-{protocol.number:03d}"
    birth = (baseline - dt.timedelta(days=int(patient["age"] * 365.25) + int(rng.integers(0, 365))))
    phi = {"PatientName": patient_name, "PatientID": pid,
           "PatientBirthDate": birth.strftime("%Y%m%d") if protocol.birth_date else ""}
    out = {"files": 0, "tumour_ml": [], "ftv_ml": [], "rows": [],
           "phi": [patient_name] + ([phi["PatientBirthDate"]] if protocol.birth_date else [])}
    patient_dir = Path(job["out"]) / COLLECTION / pid
    for v, visit in enumerate(VISITS):
        syntax = protocol.syntaxes[(v + job["index"]) % len(protocol.syntaxes)]
        local = points - shifts[v]
        phases = render_phases(anatomy, local, protocol.pixel_mm, cumulative[v], list(after_injection),
                               protocol.gain, protocol.noise_sd, rng)
        stored = np.clip(np.round(np.stack(phases)), 0, 65535).astype(np.uint16)
        fractions, _ = tissue_fractions(anatomy, local, np.exp(cumulative[v]), protocol.pixel_mm)
        background, pe, ser = kinetic_maps(stored[0], stored[early], stored[late])
        mask, ftv = analysis_mask(fractions["tumour"] >= 0.5, background, pe, rng)
        out["tumour_ml"].append(anatomy.tumour_volume_ml * float(np.exp(cumulative[v])))
        out["ftv_ml"].append(float(ftv.sum()) * voxel_ml)

        date = dates[v].strftime("%Y%m%d")
        study_clock = 8 * 3600 + float(rng.uniform(0, 8 * 3600))
        start_clock = study_clock + float(rng.uniform(300, 900))
        bolus_clock = start_clock + float(rng.uniform(-10, 90))
        accession = f"{rng.integers(10**9, 10**10)}"
        study = {**phi, "StudyInstanceUID": dicom_uid(job["seed"], visit, "study"), "StudyDate": date,
                 "StudyTime": _clock(study_clock), "StudyDescription": f"ISPY2_MRI_{visit}",
                 "AccessionNumber": accession, "SeriesDate": date, "AcquisitionDate": date,
                 "ContentDate": date}
        study_uid = study["StudyInstanceUID"]
        study_dir = patient_dir / (f"{dates[v]:%m-%d-%Y}-NA-ISPY2MRI{visit}-{study_uid[-5:]}")
        writer = SeriesWriter(study_dir, study, dicom_uid(job["seed"], visit, "frame"), protocol, rng)
        n = _write_localizer(writer, job, visit, anatomy, shifts[v], syntax, rng)
        dce_n, sources = _write_dce(writer, job, visit, stored, positions, orientation, syntax,
                                    start_clock, bolus_clock)
        n += dce_n
        base = protocol.dce_series_number * 10000
        n += _write_map(writer, job, visit, "PE2", base + 1001, pe, (0.1, -1000.0), positions, orientation, syntax)
        n += _write_map(writer, job, visit, "SER", base + 1000, ser, (0.001, 0.0), positions, orientation, syntax)
        n += _write_seg(writer, job, visit, mask, sources, positions, orientation)
        out["files"] += n
        out["rows"] += writer.rows
        out["phi"] += [accession, study_uid, writer.study_frame, *writer.series_uids]
    return out


# ---------------------------------------------------------------- cohort


def patient_numbers(n: int, seed: int) -> list[int]:
    """Distinct 6-digit I-SPY2 patient numbers."""
    rng = np.random.default_rng([seed, 3])
    return [int(x) for x in rng.choice(np.arange(100000, 1000000), size=n, replace=False)]


def arm_text(row: dict) -> str:
    """``Arm`` as published: agents joined by `` + ``, e.g. ``Paclitaxel + Neratinib``."""
    return " + ".join(PUBLISHED_AGENT[a] for a in PUBLISHED_AGENT if row.get(agent_column(a)))


_RACE_SPELLINGS = {
    "White": ("White", "Caucasian"), "Black or African American": ("Black", "Black or African American"),
    "Asian": ("Asian",), "American Indian or Alaska Native": ("American Indian or Alaska Native",),
    "Native Hawaiian or Other Pacific Islander": ("Native Hawaiian or Other Pacific Islander",),
}


def clinical_workbook(clinical: pd.DataFrame, numbers: list[int]) -> pd.DataFrame:
    """The published workbook's columns from ``sample_cohort``'s clinical table.

    Race and ethnicity take the spellings the workbook mixes; patient 0 (and every 11th) has no
    race, patient 1 (and every 9th) several races, patient 2 (and every 7th) no ethnicity.
    """
    seen: dict[str, int] = {}
    races, ethnicities = [], []
    for i, row in enumerate(clinical.to_dict("records")):
        spellings = _RACE_SPELLINGS[row["race"]]
        count = seen.get(row["race"], 0)
        seen[row["race"]] = count + 1
        race = spellings[count % len(spellings)]
        if i % 11 == 0:
            race = None
        elif i % 9 == 1:
            race = "Asian;White" if race != "Asian" else "Asian;Black or African American"
        races.append(race)
        hispanic = row["ethnicity"] == "Hispanic or Latino"
        ethnicity = ("Hispanic" if i % 2 else "Hispanic or Latino") if hispanic else "Not Hispanic"
        ethnicities.append(None if i % 7 == 2 else ethnicity)
    return pd.DataFrame({
        "Patient_ID": np.array(numbers, dtype=np.int64),
        "Arm": [arm_text(r) for r in clinical.to_dict("records")],
        "HR": clinical["HR"].astype(int), "HER2": clinical["HER2"].astype(int),
        "MP": clinical["MammaPrint"].astype(int), "pCR": clinical["pCR"].astype(int),
        "Age_at_Screening": clinical["age"].astype(float),
        "Race": races, "ethnicity": ethnicities,
    })


def _data_dictionary() -> pd.DataFrame:
    return pd.DataFrame({"Variable": list(WORKBOOK_COLUMNS), "Description": [
        "I-SPY2 patient number (PatientID ISPY2-<number>)", "treatment arm: agents joined by ' + '",
        "hormone receptor status (1 = positive)", "HER2 status (1 = positive)",
        "MammaPrint (1 = high-2)", "pathologic complete response (1 = pCR)",
        "age at screening (years)", "race (as reported; ';' separates several)", "ethnicity"]})


def patient_jobs(out: Path, patients: int, sites: int, seed: int, resolution: str):
    """Workbook, truth table and one job per patient (deterministic in ``seed``)."""
    clinical, truth, site_list = sample_cohort(patients, sites, seed)
    protocols = {s["site"]: site_protocol(k, resolution) for k, s in enumerate(site_list)}
    numbers = patient_numbers(patients, seed)
    seeds = np.random.SeedSequence([seed, 4]).spawn(patients)
    records = clinical.merge(truth, on="id").to_dict("records")
    jobs = [{"patient": rec, "protocol": protocols[rec["site"]], "out": str(out), "index": i,
             "patient_id": f"ISPY2-{numbers[i]:06d}", "date_order_broken": i % 5 == 2,
             "seed": int(s.generate_state(1)[0])} for i, (rec, s) in enumerate(zip(records, seeds))]
    return clinical, truth, numbers, jobs


def synthesize(out: Path, patients: int = 240, sites: int = len(PROTOCOLS), seed: int = 0, workers: int = 1,
               resolution: str = "demo") -> dict:
    """Write an I-SPY2-layout synthetic cohort to ``out``; returns a short summary."""
    out = Path(out)
    clinical, truth, numbers, jobs = patient_jobs(out, patients, sites, seed, resolution)
    out.mkdir(parents=True, exist_ok=True)
    results = list(parallel_map(write_patient, jobs, workers, "synth ispy2", "patient"))
    ids = [job["patient_id"] for job in jobs]
    extra = pd.DataFrame({"id": ids, "site": [f"Site-{job['protocol'].number:03d}" for job in jobs]})
    for v, visit in enumerate(VISITS):
        extra[f"tumour_ml_{visit}"] = [round(r["tumour_ml"][v], 4) for r in results]
    for v, visit in enumerate(VISITS):
        extra[f"ftv_ml_{visit}"] = [round(r["ftv_ml"][v], 4) for r in results]
    extra["date_order_broken"] = [int(job["date_order_broken"]) for job in jobs]
    extra["bilateral"] = [int(job["protocol"].bilateral) for job in jobs]
    truth_out = pd.concat([extra, truth.drop(columns="id").reset_index(drop=True)], axis=1)
    metadata = pd.DataFrame([row for r in results for row in r["rows"]])
    metadata["Data Description URI"] = ""
    metadata["Download Timestamp"] = dt.datetime(2024, 1, 1).isoformat()
    atomic_write_csv(metadata, out / "metadata.csv")
    phi = sorted({value for r in results for value in r["phi"] if value})
    atomic_write_json({"uid_root": UID_ROOT, "values": phi}, out / "phi_values.json")
    atomic_write_csv(truth_out, out / "truth.csv")
    workbook = clinical_workbook(clinical, numbers)
    with atomic_path(out / WORKBOOK) as tmp:  # written last: a cohort with a workbook is complete
        with pd.ExcelWriter(tmp, engine="openpyxl") as excel:
            workbook.to_excel(excel, sheet_name="Clinical", index=False)
            _data_dictionary().to_excel(excel, sheet_name="Data Dictionary", index=False)
    return {"patients": patients, "sites": sites, "files": sum(r["files"] for r in results),
            "pCR rate": round(clinical["pCR"].mean(), 3), "layout": "ispy2",
            "syntaxes": sorted({encodable(s) for job in jobs for s in job["protocol"].syntaxes})}
