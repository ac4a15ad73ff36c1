"""The slice stacking and geometry of ``read_phase`` against ITK's DICOM series reader (GDCM)."""

import itk
import numpy as np

from preprocessing.dicom_index import group_visits, scan_headers
from preprocessing.volume import phase_geometry, ras_affine, read_phase, resample_around


def test_read_phase_matches_itk_series_reader(tiny_raw):
    headers, skipped = scan_headers(sorted((tiny_raw / "dicom").rglob("*.dcm")))
    assert not skipped
    seen = set()
    for patient in group_visits(headers).values():
        visit = patient["T0"]
        phase = sorted(visit.phases.values(), key=lambda p: p.time_s)[-1]  # rescaled values at one site
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
