import numpy as np
import pytest

from preprocessing.kinetics import (
    background_mask,
    ftv_mask,
    kinetic_maps,
    largest_component_centroid,
    percent_enhancement,
    signal_enhancement_ratio,
)


def test_percent_enhancement_matches_hand_computed_values():
    pre = np.array([100.0, 200.0, 50.0, 0.0])
    post = np.array([170.0, 150.0, 100.0, 10.0])
    valid = pre > 10
    # 100 * (170 - 100) / 100 = 70; 100 * (150 - 200) / 200 = -25; 100 * 50 / 50 = 100; background -> 0
    np.testing.assert_allclose(percent_enhancement(post, pre, valid), [70.0, -25.0, 100.0, 0.0])


def test_signal_enhancement_ratio():
    pre = np.array([100.0, 100.0, 100.0])
    early = np.array([200.0, 150.0, 180.0])
    late = np.array([150.0, 200.0, 100.0])  # wash-out, persistent, no late enhancement
    np.testing.assert_allclose(signal_enhancement_ratio(pre, early, late, np.ones(3, bool)), [2.0, 0.5, 0.0])


def test_background_threshold_is_a_fraction_of_the_99th_percentile():
    pre = np.arange(1.0, 101.0)  # 99th percentile = 99.01
    mask = background_mask(pre, fraction=0.2)
    assert mask.sum() == 100 - 19  # values 20..100 exceed 19.8


def test_ftv_rule_threshold_background_and_connectivity():
    pe = np.zeros((10, 10, 10), dtype=np.float32)
    pe[2:5, 2:5, 2:5] = 70.0  # 27-voxel lesion exactly at threshold: kept
    pe[7, 7, 7] = 300.0  # isolated voxel: removed by the connectivity filter
    pe[2:5, 6:9, 2:5] = 69.9  # below threshold
    valid = np.ones(pe.shape, bool)
    valid[2, 2, 2] = False  # under the background threshold
    mask = ftv_mask(pe, valid, voxel_ml=0.01, pe_threshold=70.0, min_component_ml=0.05)
    assert mask.sum() == 26
    assert not mask[7, 7, 7] and not mask[2, 2, 2]


def test_kinetic_maps_ftv_in_ml_and_centroid():
    pre = np.full((12, 12, 12), 100.0)
    early = pre.copy()
    late = pre.copy()
    early[3:7, 4:8, 5:9] = 250.0  # PE 150 %
    late[3:7, 4:8, 5:9] = 200.0
    maps = kinetic_maps(pre, early, late, voxel_ml=0.008)  # 2 mm isotropic voxels
    assert maps.ftv_ml == pytest.approx(64 * 0.008)
    np.testing.assert_allclose(maps.ser[4, 5, 6], 1.5)
    np.testing.assert_allclose(largest_component_centroid(maps.ftv_mask), [4.5, 5.5, 6.5])
    assert largest_component_centroid(np.zeros((3, 3, 3), bool)) is None


def _thorax_phantom(bilateral: bool, seed: int = 0):
    """Axial (z, y, x) pre/early/late volumes, LPS identity direction, 2 mm voxels: a thorax
    (rows y >= 24) with a large strongly enhancing 'heart' behind the chest wall, breast(s)
    anterior of it (smaller y), a small tumour in the (left) breast, and speckle in the air."""
    z, y, x = np.mgrid[0:10, 0:40, 0:48]
    centres = (12, 36) if bilateral else (24,)
    breast = np.zeros(x.shape, bool)
    for cx in centres:
        breast |= ((x - cx) ** 2 + (1.5 * (y - 24)) ** 2 <= 10.0 ** 2 if bilateral
                   else (x - cx) ** 2 + (y - 24) ** 2 <= 18.0 ** 2)
    body = breast | (y >= 24)
    air = np.flatnonzero(~body)
    body.flat[np.random.default_rng(seed).choice(air, size=air.size // 200, replace=False)] = True
    pre = np.where(body, 100.0, 1.0)
    heart = (np.abs(x - 24) <= 6) & (y >= 28) & (y <= 37) & (z >= 1) & (z <= 8)
    tumour = (np.abs(x - centres[0]) <= 1) & (y >= 18) & (y <= 20) & (z >= 4) & (z <= 6)
    early, late = pre.copy(), pre.copy()
    early[heart], late[heart] = 400.0, 300.0
    early[tumour], late[tumour] = 250.0, 200.0
    return pre, early, late, tumour


def test_bilateral_ftv_and_centre_stay_in_front_of_the_chest_wall():
    pre, early, late, tumour = _thorax_phantom(bilateral=True)
    plain = kinetic_maps(pre, early, late, voxel_ml=0.008)
    assert plain.ftv_mask.sum() > 10 * tumour.sum()  # without the rule the heart dominates
    maps = kinetic_maps(pre, early, late, voxel_ml=0.008, direction=np.eye(3), spacing=np.full(3, 2.0))
    assert maps.chest_wall_found
    np.testing.assert_array_equal(maps.ftv_mask, tumour)
    assert maps.ftv_ml == pytest.approx(tumour.sum() * 0.008)
    np.testing.assert_allclose(largest_component_centroid(maps.ftv_mask), [5, 19, 12])


@pytest.mark.parametrize("layout", ["posterior-to-anterior rows", "sagittal"])
def test_chest_wall_rule_follows_patient_axes_not_array_axes(layout):
    pre, early, late, tumour = _thorax_phantom(bilateral=True)
    if layout == "posterior-to-anterior rows":  # rows run towards -y
        flip = lambda a: a[:, ::-1, :]  # noqa: E731
        direction, back = np.diag([1.0, -1.0, 1.0]), flip
    else:  # slices along L-R, rows towards feet (-z), columns towards posterior (+y)
        flip = lambda a: a.transpose(2, 0, 1)[:, ::-1, :]  # noqa: E731
        direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        back = lambda a: a[:, ::-1, :].transpose(1, 2, 0)  # noqa: E731
    maps = kinetic_maps(*(flip(a) for a in (pre, early, late)), voxel_ml=0.008, direction=direction,
                        spacing=np.full(3, 2.0))
    np.testing.assert_array_equal(back(maps.ftv_mask), tumour)


def test_unilateral_field_is_unchanged_by_the_chest_wall_rule():
    pre, early, late, tumour = _thorax_phantom(bilateral=False)
    plain = kinetic_maps(pre, early, late, voxel_ml=0.008)
    maps = kinetic_maps(pre, early, late, voxel_ml=0.008, direction=np.eye(3), spacing=np.full(3, 2.0))
    assert not maps.chest_wall_found
    np.testing.assert_array_equal(maps.ftv_mask, plain.ftv_mask)
    assert maps.ftv_ml == plain.ftv_ml
