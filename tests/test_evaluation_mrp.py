"""The MRP methods (mrp_fusion bundle) through ``python -m evaluation``: holdout and one outer fold
of nested cross-validation on a tiny multimodal cohort (1 epoch, CPU profile), the CSVs, the
ensemble weight chosen on validation patients only, the treatment phases and the report's rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bundle_utils import bundle_scripts
from evaluation.__main__ import main
from evaluation.cv import nested_cv
from evaluation.methods import METHODS, MRP_METHODS, PHASES, parse_methods
from evaluation.runner import Runner, Split
from preprocessing.prepare import Options, prepare
from preprocessing.synth import synthesize

# 18 patients at three sites, the last without mammograms, each with a subset of the MRI visits
COHORT = dict(patients=18, sites=3, seed=8, mammography_share=1.0, visits="realistic")
SPLIT = Split(val_fold=1, test_fold=2)
HOLDOUT = ("mrp_rhpc,mrp_img,mrp_imr,mrp,mrp_imr_pre,mrp_pre,mrp_imr_no_knowledge,mrp_imr_no_time_embedding,"
           "mrp_lr_rhpc,lr_clinical")
ALL_VISITS = ("T0", "T1", "T2", "T3")


def _assign_folds(entries: list[dict]) -> None:
    """Three folds, each stratum (mammograms or not x pCR or not) dealt round-robin from the test
    fold down, so that every fold holds both classes among the patients with mammograms and the
    test and validation folds hold a patient without mammograms."""
    strata: dict[tuple, list[dict]] = {}
    for entry in sorted(entries, key=lambda e: e["id"]):
        strata.setdefault((bool(entry.get("mammograms")), entry["label"]), []).append(entry)
    for members in strata.values():
        for k, entry in enumerate(members):
            entry["fold"] = (SPLIT.test_fold - k) % 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrp_eval_cohort")
    synthesize(root / "raw", workers=2, **COHORT)
    datalist = prepare(root / "raw", root / "prepared", Options(size=16, spacing=4.0, required_visits=("T0",)),
                       workers=2, mg_size=(32, 16))
    entries = datalist["training"]
    _assign_folds(entries)
    datalist["num_folds"] = 3
    (root / "prepared" / "datalist.json").write_text(json.dumps(datalist, indent=1))

    def ids(fold, cond=lambda e: True):
        return sorted(e["id"] for e in entries if e["fold"] == fold and cond(e))

    for fold in range(3):  # what the bundle runs and the report need
        with_mg = [e for e in entries if e["fold"] == fold and e.get("mammograms")]
        assert {e["label"] for e in with_mg} == {0, 1}, f"fold {fold}: both classes among the mammography patients"
    assert ids(SPLIT.test_fold, lambda e: not e.get("mammograms")), "a test patient without mammograms"
    visits = {e["id"]: set(e["ftv_ml"]) for e in entries}
    seen = ids(SPLIT.test_fold) + ids(SPLIT.val_fold)
    assert [i for i in seen if visits[i] == {"T0"}] and [i for i in seen if len(visits[i]) > 1]
    return SimpleNamespace(path=root / "prepared", truth=root / "raw" / "truth.csv", entries=entries, ids=ids,
                           visits=visits, mammograms={e["id"] for e in entries if e.get("mammograms")})


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    """``python -m evaluation holdout`` of the MRP methods (and a classical reference), as a user
    runs it, with the report and its oracle rows."""
    out = tmp_path_factory.mktemp("mrp_holdout")
    argv = ["holdout", "--data", str(cohort.path), "--out", str(out), "--method", HOLDOUT,
            "--val-fold", str(SPLIT.val_fold), "--test-fold", str(SPLIT.test_fold), "--epochs", "1",
            "--truth", str(cohort.truth), "--resamples", "20"]
    assert main(argv) == 0
    runner = Runner(cohort.path, out, "cpu", epochs=1, threads=1)

    def csv(kind, name):
        return pd.read_csv(out / f"{kind}_{name}.csv", dtype={"id": str})

    return SimpleNamespace(out=out, runner=runner, csv=csv)


def test_methods_phases_and_shared_models():
    assert {"mrp_rhpc", "mrp_imr", "mrp_img", "mrp", "mrp_imr_no_knowledge", "mrp_imr_no_time_embedding",
            "mrp_img_no_knowledge", "mrp_pre", "mrp_imr_mid"} <= set(MRP_METHODS)
    assert METHODS["mrp_imr_pre"].visits == ("T0",) == PHASES["pre"] and METHODS["mrp_mid"].visits == ("T0", "T1", "T2")
    assert METHODS["mrp_imr"].visits is None  # post-treatment: every visit of the model
    assert METHODS["mrp_img"].visits is None and METHODS["mrp_rhpc"].visits is None  # pre-treatment data only
    # the MRI model of every phase is one trained model; the ensemble trains none of its own
    keys = {METHODS[n].model_key for n in ("mrp_imr", "mrp_imr_mid", "mrp_imr_pre", "mrp", "mrp_pre")}
    assert keys == {"mrp_fusion.imr"}
    assert METHODS["mrp"].trainings == METHODS["mrp_imr"].trainings | METHODS["mrp_img"].trainings
    assert {t[3] for t in METHODS["mrp_no_time_embedding"].trainings} == {"imr", "img"}
    assert ("mrp_fusion", (), None, "img") in METHODS["mrp_no_time_embedding"].trainings  # the full img model
    with pytest.raises(ValueError, match="unknown method"):
        parse_methods("mrp_img_pre")  # mammograms are pre-treatment: one method for every phase
    # the oracle of a method has its phase's MRI information: T0 alone before treatment, else T0-T2
    assert {n: METHODS[n].oracle for n in ("mrp_imr_pre", "mrp_pre", "mrp_imr_no_knowledge_pre", "mrp_imr_mid",
                                           "mrp_mid", "mrp_imr", "mrp")} == {
        "mrp_imr_pre": "p_rhpc_mri_t0", "mrp_pre": "p_rhpc_mg_mri_t0", "mrp_imr_no_knowledge_pre": "p_rhpc_mri_t0",
        "mrp_imr_mid": "p_rhpc_mri", "mrp_mid": "p_rhpc_mg_mri", "mrp_imr": "p_rhpc_mri", "mrp": "p_rhpc_mg_mri"}


def test_rhpc_regression_reads_age_and_the_rhpc_variables_only(cohort):
    """mrp_lr_rhpc: age and every rhpc level one-hot (blank = its own level), fitted on the
    training folds only; a Table-1 field outside the rhpc group does not reach it."""
    from evaluation import baselines

    datalist = json.loads((cohort.path / "datalist.json").read_text())
    entries, fields = datalist["training"], datalist["clinical_fields"]
    rhpc = [f for f in fields if f["group"] == "rhpc"]
    table = baselines.feature_table(entries, fields, "rhpc")
    assert list(table.columns) == ["age"] + [f"rhpc_{f['name']}={level}" for f in rhpc for level in f["levels"]]
    first = entries[0]
    assert table.loc[first["id"], "age"] == first["clinical"]["age"]
    for f in rhpc:  # one level per variable, the patient's own
        row = table.loc[first["id"], [f"rhpc_{f['name']}={level}" for level in f["levels"]]]
        assert row.sum() == 1 and row[f"rhpc_{f['name']}={first['clinical'][f['name']]}"] == 1
    variable, levels = rhpc[0]["name"], rhpc[0]["levels"]

    def predicted(change=lambda c: c, fold=1):
        """Fitted on fold 0, fold 1 predicted; ``change`` applied to the clinical data of ``fold``."""
        data = [dict(e, clinical=change(dict(e["clinical"]))) if e["fold"] == fold else e for e in entries]
        return baselines.fit_predict(data, fields, "rhpc", [0], [1]).probability.to_numpy()

    def next_level(c):
        return {**c, variable: levels[(levels.index(c[variable]) + 1) % len(levels)]}

    other = next(f for f in fields if f["group"] != "rhpc" and f["type"] == "category")
    before = predicted()
    assert np.allclose(predicted(lambda c: {**c, other["name"]: other["levels"][0]}), before)  # not an input
    assert not np.allclose(predicted(next_level), before)  # an rhpc variable is
    assert np.allclose(predicted(next_level, fold=2), before)  # a held-out fold never reaches the fit


def test_holdout_csvs_have_every_test_patient(run, cohort):
    test, val = cohort.ids(SPLIT.test_fold), cohort.ids(SPLIT.val_fold)
    for name in HOLDOUT.split(","):
        written = run.csv("predictions", name)
        assert list(written.columns) == ["id", "outer_fold", "method", "probability", "label"]
        expected = [i for i in test if name != "mrp_img" or i in cohort.mammograms]
        assert sorted(written["id"]) == expected, name
        assert set(written.method) == {name} and set(written.outer_fold) == {SPLIT.test_fold}
        assert written.probability.between(0, 1).all()
        labels = {e["id"]: e["label"] for e in cohort.entries}
        assert written.set_index("id")["label"].to_dict() == {i: labels[i] for i in expected}
        inner = run.csv("validation", name)
        assert set(inner.val_fold) == {SPLIT.val_fold}
        assert sorted(inner["id"]) == sorted(i for i in test + val if name != "mrp_img" or i in cohort.mammograms)
    # five trainings for the nine MRP methods: rhpc, img, imr (shared by both phases and both ensembles), 2 ablations
    assert sorted(p.parent.parent.name for p in (run.out / "models").glob("*/*/trained.json")) == sorted(
        ["mrp_fusion.rhpc", "mrp_fusion.img", "mrp_fusion.imr", "mrp_fusion.imr+no_knowledge",
         "mrp_fusion.imr+no_time_embedding"])


def test_ensemble_is_the_validation_weight_applied_to_each_test_patient(run, cohort):
    record = json.loads((run.runner.ensemble_dir(METHODS["mrp"], SPLIT) / "models" / "ensemble.json").read_text())
    assert record["val_fold"] == SPLIT.val_fold and record["patients"] == len(cohort.ids(SPLIT.val_fold))
    w = record["weight"]
    mrp, imr, img = (run.csv("predictions", n).set_index("id")["probability"] for n in ("mrp", "mrp_imr", "mrp_img"))
    for i in cohort.ids(SPLIT.test_fold):
        expected = w * img[i] + (1 - w) * imr[i] if i in cohort.mammograms else imr[i]  # one modality: its model
        assert mrp[i] == pytest.approx(expected, abs=2e-6)
    # the weight is the bundle's choice on the validation patients' probabilities
    with bundle_scripts("mrp_fusion") as s:
        val = {}
        for n in ("mrp_imr", "mrp_img"):
            frame = run.csv("validation", n)
            val[n] = frame[frame.fold == SPLIT.val_fold].set_index("id")
        ids = sorted(val["mrp_imr"].index)
        p_mg = val["mrp_img"]["probability"].reindex(ids).to_numpy()
        assert s.ensemble.ensemble_weight(val["mrp_imr"].label[ids].to_numpy(), p_mg,
                                          val["mrp_imr"].probability[ids].to_numpy()) == w


def test_test_patients_labels_do_not_change_the_ensemble_weight(run, cohort, tmp_path):
    """The same trained models, the weight chosen again on a cohort whose test patients have the
    other label: the weight and its validation AUROC are the same."""
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    (flipped / "images").symlink_to(cohort.path / "images")
    datalist = json.loads((cohort.path / "datalist.json").read_text())
    for entry in datalist["training"]:
        if entry["fold"] == SPLIT.test_fold:
            entry["label"] = 1 - entry["label"]
    (flipped / "datalist.json").write_text(json.dumps(datalist))
    method = METHODS["mrp"]
    checkpoints = run.runner.ensemble_checkpoints(method, SPLIT)  # trained by the holdout run: reused
    original = json.loads((run.runner.ensemble_dir(method, SPLIT) / "models" / "ensemble.json").read_text())
    again = Runner(flipped, tmp_path / "out", "cpu", epochs=1, threads=1).choose_ensemble_weight(method, SPLIT,
                                                                                               checkpoints)
    assert (again["weight"], again["val_auroc"], again["patients"]) == (
        original["weight"], original["val_auroc"], original["patients"])
    chosen_on = pd.read_csv(tmp_path / "out" / "ensembles" / "mrp" / SPLIT.name / "validation" / "predictions_imr.csv",
                            dtype={"id": str})
    assert sorted(chosen_on["id"]) == cohort.ids(SPLIT.val_fold)


def test_phase_selects_the_visits_the_mri_model_sees(run, cohort):
    def probabilities(name):
        frame = pd.concat([run.csv("predictions", name), run.csv("validation", name)])
        return frame.drop_duplicates("id").set_index("id")["probability"]

    pre, post = probabilities("mrp_imr_pre"), probabilities("mrp_imr")
    only_t0 = [i for i in pre.index if cohort.visits[i] == {"T0"}]
    several = [i for i in pre.index if len(cohort.visits[i]) > 1]
    assert only_t0 and several
    for i in only_t0:  # the same single image in both phases
        assert pre[i] == pytest.approx(post[i], abs=2e-6)
    assert all(abs(pre[i] - post[i]) > 1e-6 for i in several)  # later visits seen after treatment only
    imr_eval = run.runner.model_dir("mrp_fusion.imr", SPLIT) / "eval"
    assert "--eval_visits ['T0']" in (imr_eval / "mrp_imr_pre" / "evaluate.log").read_text().splitlines()[0]
    assert "eval_visits" not in (imr_eval / "mrp_imr" / "evaluate.log").read_text().splitlines()[0]
    # the ensemble's weight is chosen per phase, with that phase's visits
    ensembles = run.out / "ensembles"
    pre_record = json.loads((ensembles / "mrp_pre" / SPLIT.name / "models" / "ensemble.json").read_text())
    post_record = json.loads((ensembles / "mrp" / SPLIT.name / "models" / "ensemble.json").read_text())
    assert pre_record["infer_visits"] == ["T0"] and post_record["infer_visits"] == list(ALL_VISITS)


def test_report_rows_and_oracles(run, cohort):
    report = (run.out / "report" / "report.md").read_text()
    for name in HOLDOUT.split(","):
        assert f"| {name} " in report
    for oracle in ("p_rhpc", "p_rhpc_mg", "p_rhpc_mri", "p_rhpc_mg_mri", "p_rhpc_mri_t0", "p_rhpc_mg_mri_t0"):
        assert f"| oracle {oracle} " in report  # the MRP methods' oracles, the _pre phase's with MRI T0 alone
    assert "| oracle p_t0_t1 " in report  # a two-stage method (lr_clinical) keeps the two-stage oracles
    assert "DeLong p vs mrp" in report and "MRP vs mrp_img: AUROC" in report
    metrics = pd.read_csv(run.out / "report" / "metrics.csv")
    n = metrics[metrics.metric == "AUROC"].set_index("method")["patients"]
    assert n["oracle p_rhpc_mg"] == n["mrp_img"] == len([i for i in cohort.ids(SPLIT.test_fold) if i in cohort.mammograms])
    assert n["oracle p_rhpc_mg_mri"] == n["mrp"] == len(cohort.ids(SPLIT.test_fold))
    assert n["oracle p_rhpc_mri_t0"] == n["mrp_imr_pre"] and n["oracle p_rhpc_mg_mri_t0"] == n["mrp_pre"]
    truth = pd.read_csv(cohort.truth, dtype={"id": str}).set_index("id")
    pre = run.csv("predictions", "mrp_pre")
    auroc = metrics[(metrics.metric == "AUROC")].set_index("method")["estimate"]
    assert auroc["oracle p_rhpc_mg_mri_t0"] == pytest.approx(
        roc_auc_score(pre.label, truth.loc[pre["id"], "p_rhpc_mg_mri_t0"]), abs=1e-9)
    # mrp_img is compared with the reference on the patients both were tested on
    assert "mrp_img: on the" in report and set(pd.read_csv(run.out / "report" / "delong.csv").method) >= {"mrp_img"}


def test_report_of_mrp_methods_alone(run, cohort, tmp_path):
    """Only MRP methods: the MRP ensemble is the reference, only the MRP oracles are shown (each on
    the patients of the method it matches), and a truth.csv without them is a clear error."""
    from evaluation.report import compute_statistics, figure_groups, read_predictions

    predictions = read_predictions([run.out / f"predictions_{n}.csv" for n in ("mrp_rhpc", "mrp_img", "mrp",
                                                                                "mrp_lr_rhpc")])
    stats = compute_statistics(predictions, None, cohort.truth, None, None, 20, 0)
    assert stats.reference == "mrp" and "mrp_lr_rhpc" in stats.delong  # the regression is an MRP method
    assert [r for r in stats.rows if r.startswith("oracle")] == ["oracle p_rhpc", "oracle p_rhpc_mg",
                                                                 "oracle p_rhpc_mg_mri"]
    assert stats.rows["oracle p_rhpc_mg"][0] == len(predictions["mrp_img"])
    assert figure_groups(list(predictions), "mrp") == {"mrp_post": ["mrp", "mrp_img", "mrp_rhpc"],
                                                       "methods": ["mrp", "mrp_lr_rhpc"]}
    two_stage_truth = tmp_path / "truth.csv"
    pd.read_csv(cohort.truth).drop(columns=["p_rhpc", "p_rhpc_mg", "p_rhpc_mri", "p_rhpc_mg_mri"]).to_csv(
        two_stage_truth, index=False)
    with pytest.raises(ValueError, match=r"no column p_rhpc \(the oracle of mrp_rhpc\)"):
        compute_statistics(predictions, None, two_stage_truth, None, None, 20, 0)
    # a multimodal cohort synthesised before the pre-treatment (T0) oracles: the missing column is named
    predictions = read_predictions([run.out / f"predictions_{n}.csv" for n in ("mrp_pre", "mrp_rhpc")])
    older_truth = tmp_path / "older_truth.csv"
    pd.read_csv(cohort.truth).drop(columns=["p_rhpc_mri_t0", "p_rhpc_mg_mri_t0"]).to_csv(older_truth, index=False)
    with pytest.raises(ValueError, match=r"no column p_rhpc_mg_mri_t0 \(the oracle of mrp_pre\); a cohort "
                                         "synthesised before it was added lacks it"):
        compute_statistics(predictions, None, older_truth, None, None, 20, 0)
    stats = compute_statistics(predictions, None, cohort.truth, None, None, 20, 0)
    assert stats.reference == "mrp_pre" and "oracle p_rhpc_mg_mri_t0" in stats.rows


def test_one_outer_fold_of_cv_with_one_inner_split(run, cohort, tmp_path):
    """The same split as the holdout (validation = the fold preceding the test fold), so the
    trained models are reused; only the evaluations and the ensemble run again."""
    out = tmp_path / "cv"
    out.mkdir()
    (out / "models").symlink_to(run.out / "models")
    runner = Runner(cohort.path, out, "cpu", epochs=1, threads=1)
    stamps = sorted(p.stat().st_mtime_ns for p in (run.out / "models").glob("*/*/trained.json"))
    results = nested_cv(runner, parse_methods("mrp_img,mrp_pre"), outer_folds=[SPLIT.test_fold], inner_folds=1)
    assert sorted(p.stat().st_mtime_ns for p in (run.out / "models").glob("*/*/trained.json")) == stamps
    test = cohort.ids(SPLIT.test_fold)
    written = pd.read_csv(out / "predictions_mrp_pre.csv", dtype={"id": str})
    assert sorted(written["id"]) == test and set(written.outer_fold) == {SPLIT.test_fold}
    assert written.set_index("id")["probability"].to_dict() == pytest.approx(
        run.csv("predictions", "mrp_pre").set_index("id")["probability"].to_dict(), abs=2e-6)
    assert sorted(results.test["mrp_img"]["id"]) == [i for i in test if i in cohort.mammograms]
    assert set(results.validation["mrp_pre"].val_fold) == {SPLIT.val_fold}
