"""Decision curves against a hand example and the dcurves package (the MRP paper's tool)."""

import numpy as np
import pandas as pd
import pytest
from dcurves import dca

from evaluation.decision import NIA, decision_curve
from evaluation.figures import decision_figure

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def test_hand_example():
    y = np.array([1, 1, 0, 0, 0])
    p = np.array([0.8, 0.3, 0.6, 0.2, 0.1])
    curve = decision_curve(y, p, [0.25, 0.5], n_resamples=0)
    # pt 0.25 (odds 1/3): called {0.8, 0.3, 0.6}: TP 2, FP 1 -> 2/5 - 1/5 / 3; treat all: 2/5 - 3/5 / 3
    # pt 0.5 (odds 1): called {0.8, 0.6}: TP 1, FP 1 -> 0; treat all: 2/5 - 3/5
    assert curve.net_benefit.tolist() == pytest.approx([0.4 - 0.2 / 3, 0.0])
    assert curve.net_benefit_all.tolist() == pytest.approx([0.4 - 0.2, -0.2])
    # per 1,000 patients (the MRP paper's Fig. 5): (net benefit - treat all) / odds x 1000
    assert NIA == "net_interventions_avoided_per_1000"
    assert curve[NIA].tolist() == pytest.approx([(0.4 / 3) * 3 * 1000, 0.2 * 1000])


@pytest.mark.parametrize("target", ["pcr", "non_pcr"])
def test_matches_dcurves(target):
    rng = np.random.default_rng(7)
    y = rng.binomial(1, 0.3, 200)
    p = np.clip(np.round(rng.beta(2 + 3 * y, 4), 2), 0, 1)  # rounded: ties at thresholds are exercised
    ours = decision_curve(y, p, THRESHOLDS, target=target, n_resamples=0)
    event, prob = (y, p) if target == "pcr" else (1 - y, 1 - p)
    theirs = dca(data=pd.DataFrame({"event": event, "model": prob}), outcome="event", modelnames=["model"],
                 thresholds=THRESHOLDS, nper=1000)
    model = theirs[theirs.model == "model"].set_index("threshold")
    treat_all = theirs[theirs.model == "all"].set_index("threshold")
    np.testing.assert_allclose(ours.net_benefit, model.loc[THRESHOLDS, "net_benefit"], atol=1e-12)
    np.testing.assert_allclose(ours.net_benefit_all, treat_all.loc[THRESHOLDS, "net_benefit"], atol=1e-12)
    np.testing.assert_allclose(ours[NIA], model.loc[THRESHOLDS, "net_intervention_avoided"], atol=1e-9)


def test_bootstrap_bands_bracket_the_curve():
    rng = np.random.default_rng(1)
    y = rng.binomial(1, 0.3, 150)
    p = np.clip(rng.beta(2 + 3 * y, 4), 0, 1)
    curve = decision_curve(y, p, THRESHOLDS, n_resamples=200, seed=3)
    assert (curve.net_benefit_low <= curve.net_benefit_high).all()
    assert ((curve.net_benefit_low <= curve.net_benefit + 0.02) & (curve.net_benefit <= curve.net_benefit_high + 0.02)).all()
    assert (curve.net_benefit_high - curve.net_benefit_low).mean() > 0.01
    assert (curve[f"{NIA}_low"] <= curve[f"{NIA}_high"]).all()
    again = decision_curve(y, p, THRESHOLDS, n_resamples=200, seed=3)
    pd.testing.assert_frame_equal(curve, again)


def test_figure_plots_interventions_avoided_per_1000():
    rng = np.random.default_rng(2)
    y = rng.binomial(1, 0.3, 100)
    p = np.clip(rng.beta(2 + 3 * y, 4), 0, 1)
    curve = decision_curve(y, p, THRESHOLDS, target="non_pcr", n_resamples=20)
    fig = decision_figure({"model": curve}, "non_pcr")
    benefit, avoided = fig.axes
    assert benefit.get_ylabel() == "net benefit"
    assert avoided.get_ylabel() == "net interventions avoided per 1,000 patients"
    np.testing.assert_allclose(avoided.lines[0].get_ydata(), curve[NIA])


@pytest.mark.parametrize("kwargs, message", [
    (dict(thresholds=[0.0, 0.5]), "strictly between"),
    (dict(target="surgery"), "target must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decision_curve([0, 1], [0.2, 0.7], **{"n_resamples": 0, **kwargs})
