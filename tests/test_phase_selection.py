import pytest

from preprocessing.dicom_index import Phase, phase_time, select_phases


def _phases(times=None, positions=None):
    n = len(times or positions)
    return [Phase(key=("s", k), time_s=None if times is None else times[k],
                  temporal_position=None if positions is None else positions[k]) for k in range(n)]


def test_phase_time_from_clock_and_trigger_time():
    assert phase_time({"AcquisitionTime": "101230.5", "ContrastBolusStartTime": "101000"}) == pytest.approx(150.5)
    assert phase_time({"TriggerTime": 155000, "AcquisitionTime": "101230"}) == pytest.approx(155.0)
    assert phase_time({}) is None


def test_selection_by_timing_picks_closest_to_150_and_450_s():
    phases = _phases(times=[335.0, -30.0, 65.0, 155.0, 245.0, 425.0, 515.0])  # any order
    pre, early, late, how = select_phases(phases)
    assert (pre.time_s, early.time_s, late.time_s, how) == (-30.0, 155.0, 425.0, "timing")


def test_selection_falls_back_to_index_without_timing():
    phases = _phases(positions=[3, 1, 2, 6, 4, 5])
    pre, early, late, how = select_phases(phases)
    assert (pre.temporal_position, early.temporal_position, late.temporal_position, how) == (1, 2, 6, "index")


def test_too_few_phases_and_missing_order_are_errors():
    with pytest.raises(ValueError, match="need a pre-contrast"):
        select_phases(_phases(times=[0.0, 150.0]))
    with pytest.raises(ValueError, match="neither timing"):
        select_phases(_phases(times=[None, None, None]))
    with pytest.raises(ValueError, match="coincide"):
        select_phases(_phases(times=[0.0, 100.0, 120.0]))
