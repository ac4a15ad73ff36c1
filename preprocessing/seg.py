"""The FTV of a study from its Analysis Mask DICOM SEG (TCIA I-SPY2), for ``--ftv-source seg``.

The collection's Analysis Mask is a Segmentation Storage object whose 8-bit frames, on the DCE
grid, are bit-coded: 0 marks a voxel in the FTV, each set bit one reason to exclude it (below the
PE threshold, connectivity, background, outside the manual VOI, OMIT). The frames and their
functional groups are read with pydicom: highdicom reads only standard-conforming Segmentations
(it needs the segment, dimension index and frame of reference modules) and decodes frames as
segment memberships, not as the raw codes needed here. Errors name what is wrong, never a tag
value (it could be PHI).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import SegmentationStorage

from .dicom_index import Phase, SliceHeader
from .volume import Geometry, GeometryError, phase_geometry, to_sitk

FTV_SOURCES = ("pe", "seg")  # the FTV rule on the kinetic maps, or the study's Analysis Mask


class AnalysisMaskError(ValueError):
    """The study's Analysis Mask cannot be used."""


def find_analysis_mask(paths: list[str]) -> str | None:
    """The study's Analysis Mask SEG among ``paths``, or None; more than one is an error."""
    found = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesDescription"])
        description = str(ds.get("SeriesDescription", "")).lower()
        if ds.get("SOPClassUID") == SegmentationStorage and "analysis mask" in description:
            found.append(path)
    if len(found) > 1:
        raise AnalysisMaskError(f"Analysis Mask: {len(found)} in the study, expected one")
    return found[0] if found else None


def read_analysis_mask(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """FTV voxels (bool, slices x rows x columns) of an Analysis Mask on its own grid, and that grid.

    Frames are placed by their PlanePositionSequence; orientation and pixel spacing come from the
    per-frame functional groups, else the shared ones, and must be one for all frames.
    """
    ds = pydicom.dcmread(path)
    if ds.get("BitsAllocated") != 8:
        raise AnalysisMaskError("Analysis Mask: frames are not 8-bit bit-coded")
    shared = ds.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(frames) != int(ds.get("NumberOfFrames", 1)):
        raise AnalysisMaskError("Analysis Mask: per-frame functional groups do not match the number of frames")

    def item(frame, sequence: str):
        found = frame.get(sequence) or shared[0].get(sequence)
        if not found:
            raise AnalysisMaskError(f"Analysis Mask: no {sequence}")
        return found[0]

    orientations = {tuple(round(float(v), 4) for v in item(f, "PlaneOrientationSequence").ImageOrientationPatient)
                    for f in frames}
    if len(orientations) != 1:
        raise AnalysisMaskError("Analysis Mask: frames do not share one orientation")
    spacings = {tuple(float(v) for v in item(f, "PixelMeasuresSequence").PixelSpacing) for f in frames}
    if len(spacings) != 1:
        raise AnalysisMaskError("Analysis Mask: frames do not share one pixel spacing")
    (orientation,), (spacing,) = orientations, spacings
    if len({int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            for f in frames if "SegmentIdentificationSequence" in f}) > 1:
        raise AnalysisMaskError("Analysis Mask: frames belong to more than one segment")
    slices = [SliceHeader(path=str(path), orientation=orientation, spacing=spacing,
                          position=tuple(float(v) for v in item(f, "PlanePositionSequence").ImagePositionPatient),
                          shape=(int(ds.Rows), int(ds.Columns))) for f in frames]
    try:
        geometry, _ = phase_geometry(Phase(key=("analysis mask",), slices=slices))
    except GeometryError as err:
        raise AnalysisMaskError(f"Analysis Mask: {err}") from None
    # phase_geometry orders slices along the normal; order the frames the same way
    order = np.argsort([np.dot(s.position, geometry.direction[:, 2]) for s in slices], kind="stable")
    codes = ds.pixel_array.reshape(len(frames), *slices[0].shape)
    return codes[order] == 0, geometry


def resample_mask(mask: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Nearest-neighbour resampling of a mask onto ``target``'s grid; outside ``source`` is False."""
    out = sitk.Resample(to_sitk(mask, source), list(target.shape[::-1]), sitk.Transform(),
                        sitk.sitkNearestNeighbor, target.origin.tolist(), target.spacing.tolist(),
                        target.direction.flatten().tolist(), 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out).astype(bool)


def analysis_mask_ftv(seg_paths: list[str], geometry: Geometry) -> tuple[np.ndarray, float] | None:
    """FTV mask on the image grid ``geometry`` and FTV in mL on the mask's own grid, from the
    study's Analysis Mask; None when the study has none."""
    path = find_analysis_mask(seg_paths)
    if path is None:
        return None
    ftv, native = read_analysis_mask(path)
    on_image = resample_mask(ftv, native, geometry)
    if ftv.any() and not on_image.any():
        raise AnalysisMaskError("Analysis Mask: its FTV lies outside the DCE field of view")
    return on_image, float(ftv.sum() * native.voxel_ml)
