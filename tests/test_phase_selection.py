import pytest

from preprocessing.dicom_index import Phase, phase_times, select_phases


def _phases(positions=None, series_numbers=None, **times):
    """Phases with per-source times, e.g. ``TriggerTime=[0, 90, ...]`` (seconds)."""
    n = len(positions or series_numbers or next(iter(times.values())))
    return [Phase(key=("s", k), temporal_position=None if positions is None else positions[k],
                  series_number=None if series_numbers is None else series_numbers[k],
                  times={s: t[k] for s, t in times.items() if t[k] is not None}) for k in range(n)]


def test_phase_times_per_source():
    tags = {"TriggerTime": 155000, "AcquisitionTime": "101230.5", "ContentTime": "101231",
            "ContrastBolusStartTime": "101000"}
    assert phase_times(tags) == pytest.approx({"TriggerTime": 155.0, "AcquisitionTime": 150.5, "ContentTime": 151.0})
    assert phase_times({"AcquisitionTime": "101230"}) == {}  # a clock needs the bolus start
    assert phase_times({}) == {}


def test_selection_by_timing_picks_closest_to_150_and_450_s():
    phases = _phases(TriggerTime=[335.0, 0.0, 65.0, 155.0, 245.0, 425.0, 515.0])  # any order
    pre, early, late, how = select_phases(phases)
    assert (pre.time_s, early.time_s, late.time_s, how) == (0.0, 155.0, 425.0, "TriggerTime")


def test_early_and_late_are_timed_from_the_first_post_contrast_phase():
    """GE's TriggerTime counts from the series start (pre-contrast 0 s, injection after it): the
    phase starting at 200 s is centred 150 s after the first post-contrast phase began at 100 s."""
    phases = _phases(TriggerTime=[0.0, 100.0, 200.0, 300.0, 400.0, 500.0])
    pre, early, late, how = select_phases(phases)
    assert (pre.time_s, early.time_s, late.time_s) == (0.0, 200.0, 500.0)
    # the same phases timed from injection by the clock are chosen alike
    shifted = _phases(AcquisitionTime=[-85.0, 15.0, 115.0, 215.0, 315.0, 415.0])
    assert [p.time_s for p in select_phases(shifted)[:3]] == [-85.0, 115.0, 415.0]


def test_frozen_clocks_fall_back_to_trigger_time():
    """I-SPY2 (TCIA): AcquisitionTime/ContentTime only seconds apart, TriggerTime increasing."""
    phases = _phases(positions=[1, 2, 3, 4, 5], TriggerTime=[0.0, 90.0, 180.0, 360.0, 450.0],
                     AcquisitionTime=[30.0, 31.0, 32.0, 33.0, 34.0], ContentTime=[30.0, 31.0, 32.0, 33.0, 34.0])
    pre, early, late, how = select_phases(phases)
    assert how == "TriggerTime"
    assert (pre.temporal_position, early.temporal_position, late.temporal_position) == (1, 3, 5)


def test_trigger_time_zero_or_not_increasing_falls_back_to_clock():
    """Siemens/Philips: TriggerTime 0 or a cardiac delay, the clock minus bolus start is right."""
    clock = [-30.0, 60.0, 150.0, 240.0, 330.0, 420.0]
    for trigger in ([0.0] * 6, [0.8, 0.8, 0.8, 0.8, 0.8, 0.8], [0.0, 300.0, 150.0, 240.0, 330.0, 420.0]):
        pre, early, late, how = select_phases(_phases(positions=list(range(1, 7)), TriggerTime=trigger,
                                                      AcquisitionTime=clock))
        assert (how, pre.time_s, early.time_s, late.time_s) == ("AcquisitionTime", -30.0, 150.0, 420.0)


def test_content_time_then_index():
    phases = _phases(positions=[1, 2, 3, 4], AcquisitionTime=[5.0, 6.0, 7.0, 8.0],
                     ContentTime=[-20.0, 150.0, 300.0, 450.0])
    assert select_phases(phases)[3] == "ContentTime"
    phases = _phases(positions=[3, 1, 2, 6, 4, 5], AcquisitionTime=[5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    pre, early, late, how = select_phases(phases)
    # by index: the second post-contrast phase is early (centred nearest 150 s at 60-120 s phases)
    assert (pre.temporal_position, early.temporal_position, late.temporal_position, how) == (1, 3, 6, "index")
    assert pre.time_s is None
    pre, early, late, how = select_phases(_phases(positions=[1, 2, 3]))
    assert (early.temporal_position, late.temporal_position) == (2, 3)  # two post-contrast phases: first, last


def test_one_series_per_phase_is_ordered_by_time_else_series_number():
    phases = _phases(AcquisitionTime=[150.0, -30.0, 450.0, 300.0])  # no temporal positions
    pre, early, late, how = select_phases(phases)
    assert (pre.time_s, early.time_s, late.time_s, how) == (-30.0, 150.0, 450.0, "AcquisitionTime")
    pre, early, late, how = select_phases(_phases(series_numbers=[1003, 1001, 1002, 1004]))
    assert (pre.series_number, early.series_number, late.series_number, how) == (1001, 1003, 1004, "index")


def test_too_few_phases_and_missing_order_are_errors():
    with pytest.raises(ValueError, match="need a pre-contrast"):
        select_phases(_phases(TriggerTime=[0.0, 150.0]))
    with pytest.raises(ValueError, match="neither usable timing"):
        select_phases(_phases(TriggerTime=[None, None, None]))
    with pytest.raises(ValueError, match="coincide"):
        select_phases(_phases(TriggerTime=[0.0, 100.0, 120.0]))
