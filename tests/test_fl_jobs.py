"""Federated jobs: per-site data, a 1-round 2-site NVFlare simulation end to end, failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bundle_utils import forget_scripts
from fl_jobs.job import TASK_REQUEST_INTERVAL, main, parser, run
from fl_jobs.sites import SiteDataError, baseline_cohorts, split_sites

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
# the fake cohort has folds 0-2: fold 2 is the central test set, fold 1 each site's validation; a
# site has 2 training patients, below NVFlare's default minimum count for statistics (10)
COHORT = ["--central-fold", "2", "--val-fold", "1", "--min-count", "2"]
AGE_BUFFERS = {"clinical.age_mean", "clinical.age_std"}


def entries(folder: Path) -> list[dict]:
    return json.loads((folder / "datalist.json").read_text())["training"]


def training_ages(sites: Path, names=("S01", "S02")) -> np.ndarray:
    """Ages of the sites' training patients (fold 1 validates; fold 2 is in no site's datalist)."""
    return np.array([e["clinical"]["age"] for name in names for e in entries(sites / name) if e["fold"] != 1], float)


def edited_cohort(source: Path, dest: Path, edit) -> Path:
    """A copy of a prepared cohort's datalist (images referenced in place) after ``edit(entries)``."""
    datalist = json.loads((source / "datalist.json").read_text())
    for entry in datalist["training"]:
        for visit in datalist["visits"]:
            entry[visit] = str(source / entry[visit])
    datalist["training"] = edit(datalist["training"])
    dest.mkdir(parents=True)
    (dest / "datalist.json").write_text(json.dumps(datalist))
    return dest


def test_split_sites_keeps_each_site_and_the_central_test_set_apart(fake_prepared, tmp_path):
    sites, central = split_sites(fake_prepared, tmp_path, sites=2, central_fold=2, val_fold=1)
    assert list(sites) == ["S01", "S02"]
    test_ids = {e["id"] for e in entries(central)}
    assert test_ids and all(e["fold"] == 2 and e["site"] in sites for e in entries(central))
    seen = set()
    for name, folder in sites.items():
        own = entries(folder)
        assert all(e["site"] == name and e["fold"] != 2 for e in own)
        assert all(Path(e["T0"]).is_absolute() and Path(e["T0"]).is_file() for e in own)
        ids = {e["id"] for e in own}
        assert not ids & test_ids and not ids & seen
        seen |= ids
    cohorts = baseline_cohorts(sites, central, tmp_path / "cohorts")
    assert {e["id"] for e in entries(cohorts["centralized"])} == seen | test_ids
    assert {e["id"] for e in entries(cohorts["local_S01"])} == {e["id"] for e in entries(sites["S01"])} | test_ids


@pytest.mark.parametrize("edit, sites, message", [
    (lambda es: es, 4, "the cohort has 3 site(s)"),
    (lambda es: [dict(e, fold=2) if e["site"] == "S02" else e for e in es], None, "site S02 has no training patients"),
    (lambda es: [e for e in es if not (e["site"] == "S03" and e["fold"] == 0 and e["label"] == 1)], None,
     "site S03: its 1 training patients are all of one class"),
    (lambda es: [e for e in es if e["fold"] != 2 or e["label"] == 0], None, "central test fold 2 needs patients of both"),
])
def test_split_sites_refuses_unusable_cohorts(fake_prepared, tmp_path, edit, sites, message):
    data = edited_cohort(fake_prepared, tmp_path / "data", edit)
    with pytest.raises(SiteDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_sites(data, tmp_path / "out", sites=sites, central_fold=2, val_fold=1)


def test_the_initial_global_model_is_drawn_with_the_jobs_seed(fake_prepared, monkeypatch):
    from evaluation.methods import BUNDLES
    from evaluation.runner import relative_config_files
    from fl_jobs.bundle import network

    monkeypatch.syspath_prepend(str(BUNDLES))
    files = relative_config_files(("train",), "cpu")

    def weights(seed):
        return network("pcr_teacher", files, {"seed": seed, "dataset_dir": str(fake_prepared)}).state_dict()

    try:
        first, again, other = weights(0), weights(0), weights(1)
    finally:  # the other bundles' scripts packages stay importable
        forget_scripts(str(BUNDLES / "pcr_teacher"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_fedavg_averages_a_rounds_results_in_site_order_whatever_order_they_arrive_in():
    from nvflare.apis.fl_constant import FLMetaKey
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

    from fl_jobs.server import SiteOrderAggregator

    steps = {"S01": 2, "S02": 1, "S03": 2}
    big = {"S01": 1e8, "S02": 1.0, "S03": -1e8}  # a float32 sum of these depends on the order
    assert (np.float32(2e8) + np.float32(1) - np.float32(2e8)) != (np.float32(2e8) - np.float32(2e8) + np.float32(1))
    small = {"S01": 1.0, "S02": 2.0, "S03": 4.0}

    def averaged(order, values):
        aggregator = SiteOrderAggregator()
        aggregator.reset_stats()
        for site in order:
            aggregator.accept_model(FLModel(
                params={"w": np.full(3, values[site], np.float32)}, params_type=ParamsType.DIFF,
                metrics={"val_loss": values[site]}, meta={"client_name": site, FLMetaKey.NUM_STEPS_CURRENT_ROUND: steps[site]}))
        return aggregator.aggregate_model()

    orders = (["S01", "S02", "S03"], ["S03", "S01", "S02"], ["S02", "S03", "S01"])
    first, *others = [averaged(order, big) for order in orders]
    assert all(np.array_equal(first.params["w"], other.params["w"]) for other in others)
    mean = averaged(orders[1], small)  # weighted by each site's steps, as NVFlare's FedAvg
    assert mean.params["w"] == pytest.approx(np.full(3, (2 * 1 + 1 * 2 + 2 * 4) / 5))
    assert mean.metrics["val_loss"] == pytest.approx(12 / 5) and mean.params_type == ParamsType.DIFF
    with pytest.raises(ValueError, match="repeated"):
        averaged(["S01", "S01"], small)


def test_job_exits_2_naming_the_missing_data_folder(tmp_path, capsys):
    assert main("pcr_teacher", ["--data", str(tmp_path / "nowhere"), "--workspace", str(tmp_path / "ws")]) == 2
    assert "nowhere/datalist.json: not found" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "summary.json").exists()


def test_dualtask_job_needs_each_sites_teacher_features(fake_prepared, tmp_path, capsys):
    argv = ["--data", str(fake_prepared), "--workspace", str(tmp_path / "ws"), "--sites", "2",
            "--teacher-features", str(tmp_path / "features")] + COHORT
    assert main("pcr_dualtask", argv) == 2
    assert "site S01:" in capsys.readouterr().err


def test_export_writes_a_job_folder_for_the_nvflare_simulator(fake_prepared, tmp_path):
    argv = ["--data", str(fake_prepared), "--workspace", str(tmp_path / "ws"), "--sites", "2", "--rounds", "1",
            "--privacy", "percentile", "--exclude-vars", "head", "--export", str(tmp_path / "job")] + COHORT
    done = subprocess.run([sys.executable, str(ROOT / "fl_jobs" / "pcr_teacher" / "job.py")] + argv,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = tmp_path / "job" / "pcr_teacher_fedavg"
    meta = json.loads((job / "meta.json").read_text())
    assert set(meta["deploy_map"]) >= {"app_server", "app_S01", "app_S02"}
    for site in ("S01", "S02"):
        custom = job / f"app_{site}" / "custom"
        assert (custom / "client.py").is_file() and (custom / "pcr_teacher" / "configs" / "train.json").is_file()
        client = json.loads((job / f"app_{site}" / "config" / "config_fed_client.json").read_text())
        text = json.dumps(client)
        assert "PercentilePrivacy" in text and "--exclude-vars head" in text
        assert f"sites/{site}" in text and not f"sites/{'S02' if site == 'S01' else 'S01'}" in text
    server = (job / "app_server" / "config" / "config_fed_server.json").read_text()
    assert "CentralEvaluator" in server and "sites/central" in server and "CrossSiteModelEval" in server
    assert "SiteOrderAggregator" in server  # an exported job averages in site order as well
    # the server's initial model, its evaluator and every client z-score age with the pooled statistics
    ages = training_ages(tmp_path / "ws" / "sites")
    configs = sorted(job.glob("app_*/config/config_fed_*.json"))
    assert len(configs) == 3
    for config in configs:  # the clients' value is inside an escaped argument
        found = [json.loads(m) for m in re.findall(r'age_stats\\?"\s*:\s*(\[[^]]*\])', config.read_text())]
        assert found and all(value == pytest.approx([ages.mean(), ages.std()], rel=1e-4) for value in found), config


@pytest.fixture(scope="module")
def one_round(fake_prepared, tmp_path_factory):
    """A 1-round, 2-site teacher job, with a filter recording everything the clients send."""
    from fl_audit import SentRecorder  # found by the simulator's processes through PYTHONPATH

    workspace = tmp_path_factory.mktemp("fl")
    sent = workspace / "sent.jsonl"
    args = parser("pcr_teacher").parse_args(["--data", str(fake_prepared), "--workspace", str(workspace),
                                             "--sites", "2", "--rounds", "1"] + COHORT)

    def record(recipe):
        recipe.add_client_output_filter(SentRecorder(str(sent)), tasks=["train", "submit_model", "validate"])

    summary = run("pcr_teacher", args, customize=record)
    return summary, workspace, sent


@pytest.fixture(scope="module", autouse=True)
def simulator_env():
    """The recorder importable in the simulator's processes; environment restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(TESTS))
        mp.syspath_prepend(str(TESTS))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TQDM_DISABLE"):
            mp.setenv(name, "1")
        yield


def test_one_round_two_sites_end_to_end(one_round, fake_prepared):
    summary, workspace, _ = one_round
    assert summary["status"] == "ok", summary.get("reason")
    assert json.loads((workspace / "summary.json").read_text())["status"] == "ok"
    central = summary["central_test"]
    n_central = sum(1 for e in entries(fake_prepared) if e["fold"] == 2 and e["site"] in ("S01", "S02"))
    assert [r["round"] for r in central["rounds"]] == [0]
    assert central["final"]["patients"] == n_central and 0.0 <= central["final"]["auroc"] <= 1.0
    assert central["final"] == {k: v for k, v in central["rounds"][0].items() if k != "round"}
    # cross-site matrix: each site's data x (global model + each site's model)
    for site in ("S01", "S02"):
        assert set(summary["cross_site"][site]) == {"SRV_FL_global_model.pt", "S01", "S02"}
    # each client trained its own copy of the bundle
    job_dir = Path(summary["job_dir"])
    for site in ("S01", "S02"):
        assert (job_dir / site / "simulate_job" / f"app_{site}" / "custom" / "pcr_teacher" / "models" / "model.pt").is_file()
    assert "model" in torch.load(summary["global_model"], map_location="cpu", weights_only=True)


def test_clients_ask_for_the_next_task_after_the_jobs_interval_not_nvflares_default(one_round):
    """The server hands every client its task-request interval with each task; the simulator's
    client sleeps that long after the task (NVFlare's 2 s default was most of a CPU round)."""
    job_dir = Path(one_round[0]["job_dir"])
    for site in ("S01", "S02"):
        intervals = re.findall(r"Finished one task run for client: \w+ interval: ([\d.]+)",
                               (job_dir / site / "log.txt").read_text())
        assert intervals and {float(value) for value in intervals} == {TASK_REQUEST_INTERVAL}, site


def test_clients_send_only_weights_differences_and_metrics(one_round):
    summary, _, sent = one_round
    records = [json.loads(line) for line in sent.read_text().splitlines()]
    state = torch.load(summary["global_model"], map_location="cpu", weights_only=True)["model"]
    assert {r["task"] for r in records} == {"train", "submit_model", "validate"}
    for record in records:
        if record["task"] == "validate":
            assert record["kind"] == "METRICS" and set(record["keys"]) == {"val_loss", "val_auc"}
        elif record["task"] == "train":  # the age buffers are frozen: never exchanged in training
            assert record["kind"] == "WEIGHT_DIFF" and record["types"] == ["ndarray"]
            assert set(record["keys"]) == set(state) - AGE_BUFFERS
        else:
            assert record["kind"] == "WEIGHTS" and set(record["keys"]) == set(state) and record["types"] == ["ndarray"]
        assert not any("FAKE" in json.dumps(v) for v in (record["keys"], record["meta"]))  # no patient id


def test_global_model_z_scores_age_with_the_pooled_statistics_of_the_sites_training_patients(one_round):
    summary, workspace, _ = one_round
    ages = training_ages(workspace / "sites")
    pooled = {"count": len(ages), "mean": ages.mean(), "std": ages.std()}  # the bundles' population std
    assert summary["age_statistics"] == pytest.approx(pooled, rel=1e-4)
    job_dir = Path(summary["job_dir"])
    models = [Path(summary["global_model"])] + [
        job_dir / site / "simulate_job" / f"app_{site}" / "custom" / "pcr_teacher" / "models" / "model.pt"
        for site in ("S01", "S02")]
    for model in models:  # the global model and each site's
        checkpoint = torch.load(model, map_location="cpu", weights_only=True)
        state = checkpoint.get("model", checkpoint)  # ignite saves a lone network's state dict unwrapped
        assert [float(state[k]) for k in ("clinical.age_mean", "clinical.age_std")] == \
            pytest.approx([pooled["mean"], pooled["std"]], rel=1e-4), model


def test_min_count_guard_refuses_a_site_with_too_few_training_patients(fake_prepared, tmp_path, capsys):
    # S01 trains on 3 patients (one of its validation patients moved to fold 0), S02 on 2
    moved = next(e["id"] for e in entries(fake_prepared) if e["site"] == "S01" and e["fold"] == 1)
    data = edited_cohort(fake_prepared, tmp_path / "data",
                         lambda es: [dict(e, fold=0) if e["id"] == moved else e for e in es])
    argv = ["--data", str(data), "--workspace", str(tmp_path / "ws"), "--sites", "2", "--rounds", "1"] + COHORT
    assert main("pcr_teacher", argv + ["--min-count", "3"]) == 1
    err = capsys.readouterr().err
    assert "site(s) S02 (2 training patients) refused by the minimum count (--min-count 3)" in err
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["status"] == "failed" and "S02" in summary["reason"] and "S01" not in summary["reason"]
    assert not (tmp_path / "ws" / "pcr_teacher_fedavg").exists()  # training never started


def test_a_failing_client_ends_the_job_with_its_reason(fake_prepared, tmp_path, capsys):
    def break_site_two(es):
        for e in es:
            if e["site"] == "S02" and e["fold"] == 0:
                broken = tmp_path / f"{e['id']}_T0.nii.gz"
                broken.write_bytes(b"not an image")
                e["T0"] = str(broken)
        return es

    data = edited_cohort(fake_prepared, tmp_path / "data", break_site_two)
    argv = ["--data", str(data), "--workspace", str(tmp_path / "ws"), "--sites", "2", "--rounds", "1",
            "--min-clients", "1"] + COHORT
    assert main("pcr_teacher", argv) == 1
    err = capsys.readouterr().err
    assert "federated job failed: S02: " in err and "ImageFileError" in err  # the site and its exception
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("S02: ")


def test_two_stage_pipeline_keeps_each_sites_targets_at_the_site(fake_prepared, tmp_path, capsys):
    from fl_jobs.two_stage import main as two_stage

    workspace = tmp_path / "ws"
    argv = ["--data", str(fake_prepared), "--workspace", str(workspace), "--sites", "2", "--rounds", "1",
            "--no-baselines", "--resamples", "20"] + COHORT
    assert two_stage(argv) == 0
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["federated"]["model"] == "final"  # 1 round: no best model
    assert summary["dualtask"]["central_test"]["final"]["patients"] == summary["teacher"]["central_test"]["final"]["patients"]
    squares = []
    for site in ("S01", "S02"):
        features = workspace / "teacher_features" / site / "teacher_features.csv"
        table = pd.read_csv(features, dtype={"id": str}).set_index("id")
        assert set(table.index) == {e["id"] for e in entries(workspace / "sites" / site)}  # its own patients, no test patient
        training = [e["id"] for e in entries(workspace / "sites" / site) if e["fold"] != 1]
        squares.append(table.loc[training].to_numpy(float) ** 2)
    # stage 2 scales its targets by their root mean square over every site's training patients,
    # as centralized training does, not by each site's own
    rms = summary["dualtask"]["age_statistics"]["teacher_target_rms"]
    assert rms == pytest.approx(np.sqrt(np.concatenate(squares).mean()), rel=1e-4)
    assert all(abs(rms - np.sqrt(site.mean())) > 1e-6 for site in squares)
    client = (workspace / "dualtask" / "pcr_dualtask_fedavg" / "S01" / "simulate_job" / "app_S01" / "config"
              / "config_fed_client.json").read_text()
    given = re.findall(r'teacher_target_rms\\?"\s*:\s*([0-9.e-]+)', client)  # inside an escaped argument
    assert given and float(given[0]) == pytest.approx(rms)
    out = capsys.readouterr().out
    assert "federated (final global model): central-test AUROC" in out and (workspace / "report" / "report.html").is_file()
