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
    """For three methods, as ``cv`` writes them: per outer fold, each inner model (one per other
    fold, validating on it) predicts its validation and test folds; the test predictions are the
    soft vote (mean) of the inner models."""
    root = tmp_path_factory.mktemp("report_inputs")
    cohort = _cohort(fake_prepared)
    folds = sorted(cohort.fold.unique())
    files = {"test": [], "validation": []}
    for seed, (method, strength) in enumerate({"dualtask": 0.3, "conv1": 0.2, "teacher": 0.35}.items()):
        inner = []
        for outer in folds:
            for k, val_fold in enumerate(f for f in folds if f != outer):
                rows = cohort[cohort.fold.isin([outer, val_fold])]
                inner.append(rows.assign(outer_fold=outer, val_fold=val_fold, method=method,
                                         probability=_probabilities(rows.label, strength, 100 * seed + 10 * outer + k)))
        inner = pd.concat(inner)
        test = (inner[inner.fold == inner.outer_fold].groupby(["id", "outer_fold", "method", "label"], as_index=False)
                ["probability"].mean())
        for kind, frame in (("test", test), ("validation", inner)):
            path = root / f"{kind}_{method}.csv"
            frame.to_csv(path, index=False)
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


def _logit(p):
    return np.log(p / (1 - p))


def test_youden_operating_point_calls_each_inner_model_at_its_own_validation_threshold(report):
    """The threshold is chosen on single-model validation probabilities and applied to the same
    model's test probabilities; the inner models' calls are soft-voted on the logit scale."""
    out, files = report
    inner = pd.read_csv(files["validation"][1])
    assert inner.method[0] == "conv1"
    votes = []
    for (outer, val_fold), model in inner.groupby(["outer_fold", "val_fold"]):
        val, test = model[model.fold == val_fold], model[model.fold == outer]
        threshold = youden_threshold(val.label, val.probability)
        votes.append(test.assign(score=_logit(test.probability) - _logit(threshold)))
    called = pd.concat(votes).groupby(["id", "label"], as_index=False)["score"].mean()
    expected = operating_point(called.label, (called.score >= 0).astype(float), 0.5)
    metrics = pd.read_csv(out / "metrics.csv").set_index(["method", "metric"])
    assert metrics.loc[("conv1", "sensitivity @Youden"), "estimate"] == pytest.approx(expected["sensitivity"])
    assert metrics.loc[("conv1", "specificity @Youden"), "estimate"] == pytest.approx(expected["specificity"])


def test_youden_with_one_inner_model_is_its_validation_threshold():
    from evaluation.report import youden_scores

    val = pd.DataFrame({"id": list("abcdef"), "label": [0, 0, 1, 0, 1, 1], "probability": [.1, .3, .35, .4, .6, .7]})
    test = pd.DataFrame({"id": list("uvwxyz"), "label": [0, 1, 0, 1, 0, 1], "probability": [.2, .34, .36, .5, .33, .9]})
    inner = pd.concat([val.assign(fold=1), test.assign(fold=0)]).assign(outer_fold=0, val_fold=1, method="m")
    threshold = youden_threshold(val.label, val.probability)
    assert threshold == pytest.approx(0.35)
    called = youden_scores(test.assign(outer_fold=0, method="m"), inner) >= 0.5
    assert called.tolist() == (test.probability >= threshold).tolist()


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
    bad = _bad(tmp_path, test.assign(fold=test.outer_fold, val_fold=test.outer_fold), "validation.csv")
    assert main(["report", "--predictions", str(files["test"][0]), "--validation", str(bad),
                 "--out", str(tmp_path / "o"), "--resamples", "10"]) == 2
    assert "must not see reported patients" in capsys.readouterr().err
