"""Federated MRP fusion job: a 1-round NVFlare simulation of the MRI and mammography models on a
tiny multimodal cohort whose third site has no mammography, then the MRP ensemble centrally."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bundle_utils import bundle_scripts
from fl_jobs.client import FROZEN
from fl_jobs.mrp_fusion.job import main, parser, run
from preprocessing.prepare import Options, prepare
from preprocessing.schema import preset
from preprocessing.synth import synthesize

# every synthesised patient has mammograms (one site); the test places them at three sites
COHORT = dict(patients=14, sites=1, seed=1, mammography_share=1.0, visits="realistic")
TRAIN, VAL, CENTRAL = 0, 1, 2
# site -> fold -> labels of the patients placed there; S03 is a hospital without mammography. Both
# classes train at every site and among the mammography patients, the pooled validation patients
# and the central test set (with and without mammograms) hold both classes. Other patients train.
PLAN = {"S01": {TRAIN: [1, 0], VAL: [1], CENTRAL: [0]},
        "S02": {TRAIN: [1, 0], VAL: [0], CENTRAL: [1]},
        "S03": {TRAIN: [1, 0], VAL: [0], CENTRAL: [0]}}
OPTIONS = ["--central-fold", str(CENTRAL), "--val-fold", str(VAL), "--min-count", "2"]


def place(prepared: Path, dest: Path, plan: dict, drop_mammograms=("S03",)) -> Path:
    """A datalist of the prepared patients placed by ``plan`` (images referenced in place); the
    mammograms of the sites ``drop_mammograms`` removed from their entries."""
    datalist = json.loads((prepared / "datalist.json").read_text())
    pool = {label: [e for e in datalist["training"] if e["label"] == label] for label in (0, 1)}
    wanted = {label: sum(labels.count(label) for folds in plan.values() for labels in folds.values()) for label in (0, 1)}
    assert all(len(pool[k]) >= wanted[k] for k in (0, 1)), f"the tiny cohort has too few patients: {wanted}"
    entries = [dict(pool[label].pop(0), site=site, fold=fold)
               for site, folds in plan.items() for fold, labels in folds.items() for label in labels]
    sites = list(plan)
    entries += [dict(e, site=sites[k % 2], fold=TRAIN) for k, e in enumerate(pool[0] + pool[1])]
    for entry in entries:
        for visit in datalist["visits"]:
            if visit in entry:
                entry[visit] = str(prepared / entry[visit])
        if entry["site"] in drop_mammograms:
            entry.pop("mammograms", None)
        elif entry.get("mammograms"):
            entry["mammograms"] = {view: str(prepared / p) for view, p in entry["mammograms"].items()}
    dest.mkdir(parents=True)
    (dest / "datalist.json").write_text(json.dumps({**datalist, "numTraining": len(entries), "training": entries}))
    return dest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fl_mrp_cohort")
    synthesize(root / "raw", workers=2, **COHORT)
    prepare(root / "raw", root / "prepared", Options(size=16, spacing=4.0, required_visits=("T0",)), workers=2,
            mg_size=(32, 16))
    return root / "prepared"


@pytest.fixture(scope="module")
def cohort(prepared) -> Path:
    return place(prepared, prepared.parent / "cohort", PLAN)


def entries(folder: Path) -> list[dict]:
    return json.loads((folder / "datalist.json").read_text())["training"]


@pytest.fixture(scope="module", autouse=True)
def simulator_env():
    """One thread per process; environment restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TQDM_DISABLE"):
            mp.setenv(name, "1")
        yield


@pytest.mark.parametrize("model, prefix", [("rhpc", "extractor"), ("imr", "rhpc"), ("img", "rhpc")])
def test_clients_keep_exactly_the_age_buffers_of_each_network_out_of_the_exchange(model, prefix):
    with bundle_scripts("mrp_fusion") as s:
        network = s.networks.mrp_network(model, preset("synthetic").field_record(), widen_factor=0.0625)
    frozen = {k for k in network.state_dict() if re.search(FROZEN, k)}
    assert frozen == {f"{prefix}.age_mean", f"{prefix}.age_std"}  # not the age embedding or the age head


def test_no_site_with_mammograms_stops_before_nvflare(prepared, tmp_path, capsys):
    data = place(prepared, tmp_path / "data", PLAN, drop_mammograms=tuple(PLAN))
    argv = ["--data", str(data), "--workspace", str(tmp_path / "ws"), "--rounds", "1"] + OPTIONS
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: no site has patients with mammograms (S01, S02, S03 have none): the img job (model=img) " \
           "cannot run; leave it out with --models imr,rhpc" in err
    assert not (tmp_path / "ws" / "summary.json").exists()
    assert main(argv[:4] + ["--models", "imr,mg"]) == 2
    assert "--models imr,mg: give each of imr, img, rhpc at most once" in capsys.readouterr().err


@pytest.fixture(scope="module")
def federated(cohort, tmp_path_factory):
    """The imr and img jobs, 1 round each, and the MRP ensemble (the rhpc job is the imr job's
    pattern with another network; left out here for time)."""
    workspace = tmp_path_factory.mktemp("fl_mrp")
    args = parser().parse_args(["--data", str(cohort), "--workspace", str(workspace), "--rounds", "1",
                                "--models", "imr,img"] + OPTIONS)
    return run(args), workspace


def test_mammography_job_has_only_the_sites_with_mammograms_as_clients(federated):
    summary, workspace = federated
    assert summary["status"] == "ok", summary.get("reason")
    assert json.loads((workspace / "summary.json").read_text())["status"] == "ok"
    jobs = summary["jobs"]
    assert jobs["imr"]["clients"] == ["S01", "S02", "S03"] and jobs["imr"]["not_clients"] == {}
    assert jobs["img"]["clients"] == ["S01", "S02"]
    assert jobs["img"]["not_clients"] == {"S03": "no patient with mammograms"}  # stated, not silently skipped
    for model, sites in (("imr", {"S01", "S02", "S03"}), ("img", {"S01", "S02"})):
        job_dir = Path(jobs[model]["job_dir"])
        assert {p.name for p in job_dir.iterdir() if p.name.startswith("S0")} == sites  # NVFlare's clients
        assert set(jobs[model]["cross_site"]) == sites
        assert all(set(row) == sites | {"SRV_FL_global_model.pt"} for row in jobs[model]["cross_site"].values())


def test_global_models_z_score_age_with_the_pooled_statistics_of_their_training_patients(federated):
    summary, workspace = federated
    train = [e for site in ("S01", "S02", "S03") for e in entries(workspace / "sites" / site) if e["fold"] == TRAIN]
    for model, patients in (("imr", train), ("img", [e for e in train if e.get("mammograms")])):
        ages = np.array([e["clinical"]["age"] for e in patients], float)
        pooled = {"count": len(ages), "mean": ages.mean(), "std": ages.std()}  # the bundle's population std
        job = summary["jobs"][model]
        assert job["age_statistics"] == pytest.approx(pooled, rel=1e-4), model
        job_dir = Path(job["job_dir"])
        models = [Path(job["global_model"]), workspace / "global_models" / f"model_{model}.pt"] + [
            job_dir / site / "simulate_job" / f"app_{site}" / "custom" / "mrp_fusion" / "models" / f"model_{model}.pt"
            for site in job["clients"]]
        for path in models:  # the global model, the one the ensemble uses and each site's best local model
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
            assert [float(state[k]) for k in ("rhpc.age_mean", "rhpc.age_std")] == \
                pytest.approx([pooled["mean"], pooled["std"]], rel=1e-4), path


def test_central_predictions_cover_every_test_patient_with_the_models_it_has(federated, cohort):
    summary, workspace = federated
    test = {e["id"]: e for e in entries(cohort) if e["fold"] == CENTRAL}
    with_mg = {i for i, e in test.items() if e.get("mammograms")}
    assert with_mg and set(test) - with_mg  # the central test set has patients with and without mammograms
    mrp = pd.read_csv(summary["central_test"]["mrp"]["predictions"], dtype={"id": str})
    assert list(mrp.columns) == ["id", "outer_fold", "method", "probability", "label", "models_used"]
    assert sorted(mrp["id"]) == sorted(test) and mrp["probability"].between(0, 1).all()
    assert dict(zip(mrp["id"], mrp["models_used"])) == {i: "imr+img" if i in with_mg else "imr" for i in test}
    assert dict(zip(mrp["id"], mrp["label"])) == {i: e["label"] for i, e in test.items()}
    assert summary["central_test"]["mrp"]["patients"] == len(test) and 0 <= summary["central_test"]["mrp"]["auroc"] <= 1
    # each global model on the central test set, server side: the img model on the patients with mammograms
    for model, ids in (("imr", set(test)), ("img", with_mg)):
        central = pd.read_csv(summary["central_test"][model]["predictions"], dtype={"id": str})
        assert set(central["id"]) == ids and central["probability"].between(0, 1).all()
        assert summary["central_test"][model]["model"] == "final"  # 1 round: no best model


def test_ensemble_weight_is_chosen_on_the_sites_validation_patients_never_the_test_patients(federated, cohort):
    summary, workspace = federated
    validation = {e["id"] for e in entries(cohort) if e["fold"] == VAL}
    ensemble = summary["ensemble"]
    assert ensemble["patients"] == len(validation) and ensemble["weight_img"] + ensemble["weight_imr"] == pytest.approx(1)
    record = json.loads(Path(ensemble["file"]).read_text())
    assert record["weight"] == ensemble["weight_img"] and 0 <= record["weight"] <= 1
    seen = pd.read_csv(workspace / "ensemble" / "validation" / "predictions_imr.csv", dtype={"id": str})
    assert set(seen["id"]) == validation
