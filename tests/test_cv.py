"""Nested cross-validation over the bundles: soft voting, teacher per inner split, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation.__main__ import main
from evaluation.cv import inner_validation_folds, nested_cv
from evaluation.methods import METHODS, parse_methods
from evaluation.runner import Runner, SettingsConflict, Split

FAST = dict(widen_factor=0.0625, batch_size=4)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, fake_prepared):
    """1 outer fold x 2 inner splits of the 3-fold fake cohort, dual-task and Conventional #2."""
    runner = Runner(fake_prepared, tmp_path_factory.mktemp("cv"), "cpu", epochs=1, overrides=FAST)
    methods = parse_methods("dualtask,conv2")
    return runner, methods, nested_cv(runner, methods, outer_folds=[0])


def _fold_ids(prepared, folds):
    entries = json.loads((prepared / "datalist.json").read_text())["training"]
    return sorted(e["id"] for e in entries if e["fold"] in folds)


def test_out_of_fold_predictions_are_the_soft_vote_of_the_inner_models(cv_run, fake_prepared):
    runner, _, results = cv_run
    written = pd.read_csv(runner.out / "predictions_dualtask.csv", dtype={"id": str})
    assert list(written.columns) == ["id", "outer_fold", "method", "probability", "label"]
    assert sorted(written["id"]) == _fold_ids(fake_prepared, [0]) and set(written["outer_fold"]) == {0}
    inner = [pd.read_csv(runner.model_dir(METHODS["dualtask"].model_key, Split(v, 0)) / "eval" / "dualtask" /
                         "predictions.csv", dtype={"id": str}) for v in (1, 2)]
    vote = pd.concat(inner).groupby("id")["probability"].mean()[_fold_ids(fake_prepared, [0])]
    assert written.set_index("id")["probability"].to_dict() == pytest.approx(vote.to_dict())
    assert len(results.test["conv2"]) == len(written)
    # inner-model predictions: each inner model on its own validation fold and on the test fold
    validation = pd.read_csv(runner.out / "validation_dualtask.csv", dtype={"id": str})
    assert list(validation.columns) == ["id", "outer_fold", "method", "probability", "label", "fold", "val_fold"]
    assert set(validation.outer_fold) == {0} and set(validation.val_fold) == {1, 2}
    for val_fold, model in ((1, inner[0]), (2, inner[1])):
        rows = validation[validation.val_fold == val_fold]
        assert sorted(rows["id"]) == _fold_ids(fake_prepared, [0, val_fold])
        assert set(rows.fold) == {0, val_fold}
        assert rows.set_index("id")["probability"].to_dict() == pytest.approx(
            model.set_index("id")["probability"][rows["id"]].to_dict())


def test_every_inner_split_uses_a_teacher_trained_on_its_own_training_folds(cv_run, fake_prepared):
    runner, _, _ = cv_run
    teachers = sorted((runner.out / "models").glob("pcr_teacher/*"))
    assert [t.name for t in teachers] == ["test0_val1", "test0_val2"]  # one teacher per split, shared by conv2
    for val, train in ((1, [2]), (2, [1])):
        features = runner.model_dir("pcr_teacher", Split(val, 0)) / "models" / "teacher_features.csv"
        sidecar = json.loads(features.with_name(features.name + ".json").read_text())
        assert (sidecar["train_folds"], sidecar["val_fold"], sidecar["test_fold"]) == (train, val, 0)
        ids = set(pd.read_csv(features, dtype={"id": str})["id"])
        assert ids == set(_fold_ids(fake_prepared, [1, 2])) and not ids & set(_fold_ids(fake_prepared, [0]))
        log = (runner.model_dir(METHODS["dualtask"].model_key, Split(val, 0)) / "train.log").read_text()
        assert str(features) in log.splitlines()[0]  # the stage-2 run was given this split's teacher


def test_rerun_reuses_trained_models(cv_run):
    runner, methods, _ = cv_run
    markers = sorted(runner.out.rglob("trained.json"))
    stamps = [m.stat().st_mtime_ns for m in markers]
    runner.train(methods[0].bundle, methods[0].train, Split(1, 0), methods[0].teacher)
    assert [m.stat().st_mtime_ns for m in markers] == stamps
    # a model trained with other settings (here the seed) is never replaced: the run stops, naming both
    reseeded = Runner(runner.data, runner.out, runner.profile, runner.epochs, seed=1, overrides=runner.overrides)
    teacher_dir = reseeded.model_dir("pcr_teacher", Split(1, 0))
    with pytest.raises(SettingsConflict, match=r"holds a model trained with other settings \(.*seed 0.*\); "
                                               r"this run's settings: .*seed 1"):
        reseeded.train("pcr_teacher", (), Split(1, 0))
    logs = sorted(runner.out.rglob("*.log"))
    with pytest.raises(SettingsConflict):  # found before any training starts
        nested_cv(reseeded, methods, outer_folds=[0])
    assert sorted(runner.out.rglob("*.log")) == logs
    assert json.loads((teacher_dir / "trained.json").read_text())["seed"] == 0
    assert (teacher_dir / "models" / "teacher_features.csv").is_file() and (teacher_dir / "models" / "model.pt").is_file()
    # an interrupted training (no trained.json) is started again
    (teacher_dir / "trained.json").rename(teacher_dir / "was_trained.json")
    reseeded.train("pcr_teacher", (), Split(1, 0))
    assert json.loads((teacher_dir / "trained.json").read_text())["seed"] == 1
    assert not (teacher_dir / "was_trained.json").exists()


def test_baselines_in_the_same_folds_with_scaling_fitted_on_training_folds(cv_run, fake_prepared):
    """lr_* methods: same drivers and CSVs as the bundles; nothing of the held-out folds in the fit."""
    from evaluation import baselines

    runner, _, _ = cv_run
    results = nested_cv(runner, parse_methods("lr_clinical,lr_ftv,lr_ftv_t2"), outer_folds=[0])
    for name in ("lr_clinical", "lr_ftv", "lr_ftv_t2"):
        written = pd.read_csv(runner.out / f"predictions_{name}.csv", dtype={"id": str})
        assert sorted(written["id"]) == _fold_ids(fake_prepared, [0]) and written.probability.between(0, 1).all()
        assert set(results.validation[name].val_fold) == {1, 2}
    datalist = json.loads((fake_prepared / "datalist.json").read_text())
    entries, fields = datalist["training"], datalist["clinical_fields"]
    table = baselines.feature_table(entries, fields, "ftv_t2")
    assert list(table.columns[-3:]) == ["log_ftv_T0", "log_ftv_change_T1", "log_ftv_change_T2"]
    first = entries[0]
    assert table.loc[first["id"], "log_ftv_change_T2"] == pytest.approx(
        np.log(first["ftv_ml"]["T2"] + 0.1) - np.log(first["ftv_ml"]["T0"] + 0.1))
    # changing a held-out patient changes nothing fitted on the training folds
    held_out = next(e for e in entries if e["fold"] == 0)
    before = baselines.fit_predict(entries, fields, "ftv", [2], [1])
    altered = [dict(e, ftv_ml={k: v * 50 for k, v in e["ftv_ml"].items()}) if e is held_out else e for e in entries]
    assert baselines.fit_predict(altered, fields, "ftv", [2], [1]).probability.tolist() == pytest.approx(
        before.probability.tolist())


def test_inner_validation_folds():
    assert inner_validation_folds([0, 1, 2, 3, 4], 4) == [3, 2, 1, 0]
    assert inner_validation_folds([0, 1, 2, 3, 4], 4, 1) == [3]  # the demo's split
    assert inner_validation_folds([0, 1, 2, 3, 4], 0, 2) == [4, 3]


def test_outer_folds_in_parallel_with_one_inner_split(fake_prepared, tmp_path):
    runner = Runner(fake_prepared, tmp_path, "cpu", epochs=1, overrides=FAST, threads=1)
    results = nested_cv(runner, parse_methods("conv2"), outer_folds=[0, 1], inner_folds=1, jobs=2)
    assert sorted(results.test["conv2"]["id"]) == _fold_ids(fake_prepared, [0, 1])
    assert sorted(p.name for p in (tmp_path / "models" / "pcr_teacher").iterdir()) == ["test0_val2", "test1_val0"]
    validation = results.validation["conv2"]
    assert set(zip(validation.outer_fold, validation.val_fold)) == {(0, 2), (1, 0)}


def test_cli_errors(tmp_path, capsys):
    assert main(["cv", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing/datalist.json: not found" in capsys.readouterr().err
    assert main(["cv", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--method", "dualtask,magic"]) == 2
    assert "unknown method(s) magic" in capsys.readouterr().err


def test_unknown_outer_fold_is_refused(fake_prepared, tmp_path, capsys):
    assert main(["cv", "--data", str(fake_prepared), "--out", str(tmp_path), "--outer-folds", "0,7"]) == 2
    assert "outer fold(s) [7] not in the cohort's folds [0, 1, 2]" in capsys.readouterr().err


def test_holdout_cli_as_the_demo_runs_it(fake_prepared, tmp_path, capsys):
    ids = _fold_ids(fake_prepared, [0])
    truth = pd.DataFrame({"id": ids, "p_clinical": 0.3, "p_t0": 0.4, "p_t0_t1": 0.5, "p_t0_t2": 0.6})
    truth.to_csv(tmp_path / "truth.csv", index=False)
    argv = ["holdout", "--data", str(fake_prepared), "--out", str(tmp_path / "out"), "--method", "conv2",
            "--val-fold", "1", "--test-fold", "0", "--epochs", "1", "--truth", str(tmp_path / "truth.csv"),
            "--resamples", "20"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "conv2" in printed and "oracle p_t0_t2" in printed and "report/report.html" in printed
    written = pd.read_csv(tmp_path / "out" / "predictions_conv2.csv", dtype={"id": str})
    assert sorted(written["id"]) == ids and set(written["method"]) == {"conv2"}
    assert (tmp_path / "out" / "report" / "figures" / "roc_methods.png").is_file()
