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
