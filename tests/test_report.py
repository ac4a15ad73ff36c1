"""``python -m evaluation report``: every table and figure, recomputed independently where possible."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from evaluation.__main__ import main
from evaluation.delong import delong_test
from evaluation.metrics import operating_point, youden_threshold


def _cohort(prepared):
    entries = json.loads((prepared / "datalist.json").read_text())["training"]
    return pd.DataFrame({"id": [e["id"] for e in entries], "label": [e["label"] for e in entries],
                         "fold": [e["fold"] for e in entries]})


def _probabilities(labels, strength, seed):
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + strength * (labels - 0.5) + rng.normal(0, 0.2, len(labels)), 0.01, 0.99).round(3)


@pytest.fixture(scope="module")
def inputs(fake_prepared, tmp_path_factory):
    """Out-of-fold test predictions (outer fold = the patient's fold) and, per outer fold,
    validation predictions of the other folds' patients, for three methods."""
    root = tmp_path_factory.mktemp("report_inputs")
    cohort = _cohort(fake_prepared)
    files = {"test": [], "validation": []}
    for seed, (method, strength) in enumerate({"dualtask": 0.5, "conv1": 0.3, "teacher": 0.6}.items()):
        test = cohort.assign(outer_fold=cohort.fold, method=method, probability=_probabilities(cohort.label, strength, seed))
        val = pd.concat([cohort[cohort.fold != f].assign(outer_fold=f) for f in sorted(cohort.fold.unique())])
        val = val.assign(method=method, probability=_probabilities(val.label, strength, seed + 10))
        for kind, frame in (("test", test), ("validation", val)):
            path = root / f"{kind}_{method}.csv"
            frame.drop(columns="fold").to_csv(path, index=False)
            files[kind].append(path)
    truth = cohort.assign(p_clinical=0.4, p_t0=_probabilities(cohort.label, 0.2, 5), p_t0_t1=0.5, p_t0_t2=0.6)
    truth.loc[1, "p_t0_t1"] = 0.7  # FAKE001 has pCR
    truth.drop(columns=["label", "fold"]).to_csv(root / "truth.csv", index=False)
    return files, root / "truth.csv"


@pytest.fixture(scope="module")
def report(inputs, fake_prepared, tmp_path_factory):
    files, truth = inputs
    out = tmp_path_factory.mktemp("report")
    argv = ["report", "--predictions", *map(str, files["test"]), "--validation", *map(str, files["validation"]),
            "--truth", str(truth), "--data", str(fake_prepared), "--out", str(out), "--resamples", "60"]
    assert main(argv) == 0
    return out, files


def test_report_files(report):
    out, _ = report
    for name in ("report.md", "report.html", "metrics.csv", "delong.csv", "decision_curves.csv", "subgroups.csv",
                 "odds_ratios.csv"):
        assert (out / name).is_file(), name
    for stem in ("roc_comparison", "pr_comparison", "dca_pcr", "dca_non_pcr", "calibration"):
        for suffix in (".png", ".svg"):
            assert (out / "figures" / f"{stem}{suffix}").stat().st_size > 1000, stem + suffix
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and 'src="figures' not in page  # self-contained
    md = (out / "report.md").read_text()
    for text in ("| dualtask", "| conv1", "| teacher", "oracle p_t0_t1", "DeLong p vs dualtask", "sensitivity @Youden",
                 "calibration slope", "figures/roc_comparison.png", "Odds ratios", "HER2",
                 "Dual-task vs Conventional #1: AUROC"):
        assert text in md, text
    assert not list(out.rglob(".tmp-*"))


def test_auroc_and_delong_recomputed(report):
    out, files = report
    metrics = pd.read_csv(out / "metrics.csv").set_index(["method", "metric"])
    frames = {f.stem.split("_", 1)[1]: pd.read_csv(f, dtype={"id": str}) for f in files["test"]}
    for name, frame in frames.items():
        estimate, low, high = metrics.loc[(name, "AUROC"), ["estimate", "low", "high"]]
        assert estimate == pytest.approx(roc_auc_score(frame.label, frame.probability))
        assert low < estimate < high
    delong = pd.read_csv(out / "delong.csv").set_index("method")
    a, b = frames["dualtask"], frames["conv1"]
    assert delong.loc["conv1", "p_value"] == pytest.approx(delong_test(a.label, a.probability, b.probability).p_value)
    assert set(delong.index) == {"conv1", "teacher"}
    assert metrics.loc[("oracle p_t0_t1", "AUROC"), "estimate"] == pytest.approx(0.5 + 0.5 / 9, rel=1e-6)


def test_youden_threshold_comes_from_each_outer_folds_validation(report):
    out, files = report
    test = pd.read_csv(files["test"][1])
    val = pd.read_csv(files["validation"][1])
    assert test.method[0] == "conv1"
    thresholds = {f: youden_threshold(v.label, v.probability) for f, v in val.groupby("outer_fold")}
    expected = operating_point(test.label, test.probability, test.outer_fold.map(thresholds).to_numpy())
    metrics = pd.read_csv(out / "metrics.csv").set_index(["method", "metric"])
    assert metrics.loc[("conv1", "sensitivity @Youden"), "estimate"] == pytest.approx(expected["sensitivity"])
    assert metrics.loc[("conv1", "specificity @Youden"), "estimate"] == pytest.approx(expected["specificity"])


def test_summary_is_printed(inputs, tmp_path, capsys):
    files, _ = inputs
    assert main(["report", "--predictions", *map(str, files["test"]), "--out", str(tmp_path), "--resamples", "20",
                 "--reference", "conv1"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith("method") and "report: " in printed and "figures: " in printed
    assert "@Youden" not in (tmp_path / "report.md").read_text().split("## Operating points")[1].split("##")[0]


def _bad(tmp_path, frame: pd.DataFrame, name="bad.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(columns="label"), "bad.csv: missing column(s) label"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "appears more than once for method conv1"),
    (lambda f: f.iloc[1:], "method conv1 was not tested on the same patients as the reference"),
    (lambda f: f.assign(probability=f.probability * 3), "within [0, 1]"),
])
def test_bad_predictions(inputs, tmp_path, capsys, change, message):
    files, _ = inputs
    bad = _bad(tmp_path, change(pd.read_csv(files["test"][1], dtype={"id": str})))
    assert main(["report", "--predictions", str(files["test"][0]), str(bad), "--out", str(tmp_path / "o"),
                 "--resamples", "10"]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")  # noqa
    assert not (tmp_path / "o" / "report.md").exists()


def test_validation_overlapping_the_reported_patients_is_refused(inputs, tmp_path, capsys):
    files, _ = inputs
    test = pd.read_csv(files["test"][0], dtype={"id": str})
    bad = _bad(tmp_path, test, "validation.csv")
    assert main(["report", "--predictions", str(files["test"][0]), "--validation", str(bad),
                 "--out", str(tmp_path / "o"), "--resamples", "10"]) == 2
    assert "must not see reported patients" in capsys.readouterr().err
