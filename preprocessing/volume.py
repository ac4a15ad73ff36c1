"""Phase volumes from DICOM slices, and ITK resampling onto a fixed isotropic grid.

Slices are ordered by their position along the slice normal (file order and InstanceNumber are
not trusted), checked for one shared geometry, and scaled by RescaleSlope/Intercept. A slice is
a file, or one frame of a multi-frame (Enhanced MR) file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.pixels import pixel_array

from .dicom_index import Phase, SliceHeader


class GeometryError(ValueError):
    """Slices or phases do not form one regular volume."""


@dataclass
class Geometry:
    origin: np.ndarray  # position of voxel (0, 0, 0), LPS mm
    spacing: np.ndarray  # (column, row, slice) spacing, mm
    direction: np.ndarray  # 3x3, columns = directions of increasing column, row, slice index
    shape: tuple[int, int, int]  # (slices, rows, columns)

    def same_as(self, other: "Geometry") -> bool:
        return (self.shape == other.shape and np.allclose(self.origin, other.origin, atol=1e-2)
                and np.allclose(self.spacing, other.spacing, atol=1e-3)
                and np.allclose(self.direction, other.direction, atol=1e-3))

    def to_physical(self, index_zyx: np.ndarray) -> np.ndarray:
        return self.origin + self.direction @ (index_zyx[::-1] * self.spacing)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def phase_geometry(phase: Phase) -> tuple[Geometry, list[SliceHeader]]:
    """Geometry of a phase and its slices in ascending position along the normal."""
    first = phase.slices[0]
    for s in phase.slices[1:]:
        if s.orientation != first.orientation or s.spacing != first.spacing or s.shape != first.shape:
            raise GeometryError("slices differ in orientation, pixel spacing or matrix size")
    if len(first.orientation) != 6 or len(first.spacing) != 2:
        raise GeometryError("missing ImageOrientationPatient or PixelSpacing")
    row_dir, col_dir = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    ordered = sorted(phase.slices, key=lambda s: float(np.dot(s.position, normal)))
    depth = np.array([np.dot(s.position, normal) for s in ordered])
    gaps = np.diff(depth)
    if len(ordered) < 2:
        raise GeometryError("a single slice is not a volume")
    if np.any(gaps < 1e-3):
        raise GeometryError("duplicate slice positions")
    if np.ptp(gaps) > 0.01 * np.median(gaps) + 1e-3:
        raise GeometryError("non-uniform slice spacing (missing or extra slice)")
    # DICOM PixelSpacing is (between rows, between columns)
    spacing = np.array([first.spacing[1], first.spacing[0], float(np.median(gaps))])
    geometry = Geometry(np.array(ordered[0].position), spacing,
                        np.stack([row_dir, col_dir, normal], axis=1), (len(ordered),) + first.shape)
    return geometry, ordered


def read_phase(phase: Phase) -> tuple[np.ndarray, Geometry]:
    """Float32 volume (slices, rows, columns) of real-world values, and its geometry."""
    geometry, slices = phase_geometry(phase)
    volume = np.empty(geometry.shape, dtype=np.float32)
    multiframe = {}  # path -> dataset: a multi-frame file is read once, and only its frames of this phase decoded
    for k, s in enumerate(slices):
        # the whole file is read: pixel_array(path) finds no pixel data in a deflated file
        ds = multiframe[s.path] if s.path in multiframe else pydicom.dcmread(s.path)
        if s.frame is not None:
            multiframe[s.path] = ds
        pixels = pixel_array(ds, index=s.frame)  # stored values, decoded by pydicom (any transfer syntax)
        if pixels.shape != geometry.shape[1:]:
            raise GeometryError("pixel data does not match Rows/Columns")
        volume[k] = pixels * s.rescale[0] + s.rescale[1]
    return volume, geometry


def to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetOrigin(geometry.origin.tolist())
    image.SetSpacing(geometry.spacing.tolist())
    image.SetDirection(geometry.direction.flatten().tolist())
    return image


def resample_around(array: np.ndarray, geometry: Geometry, centre_mm: np.ndarray, size: int,
                    spacing_mm: float, nearest: bool = False) -> np.ndarray:
    """Resample onto a ``size``^3 axis-aligned (LPS) grid of ``spacing_mm`` centred at ``centre_mm``.

    ITK's resampler (through SimpleITK, which loads in a fraction of the memory of the full
    wrapping). Returns an array indexed (x, y, z); voxels outside the acquired field are 0.
    """
    origin = np.asarray(centre_mm, dtype=float) - spacing_mm * (size - 1) / 2
    out = sitk.Resample(to_sitk(array, geometry), [size] * 3, sitk.Transform(),
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                        origin.tolist(), [spacing_mm] * 3, np.eye(3).flatten().tolist(), 0.0, sitk.sitkFloat32)
    return np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0))


def ras_affine(centre_mm: np.ndarray, size: int, spacing_mm: float) -> np.ndarray:
    """NIfTI (RAS) affine of the grid ``resample_around`` produces (ITK works in LPS)."""
    origin_lps = np.asarray(centre_mm, dtype=float) - spacing_mm * (size - 1) / 2
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = origin_lps * np.array([-1, -1, 1])
    return affine
