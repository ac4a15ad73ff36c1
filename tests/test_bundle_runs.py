"""1-epoch runs of every config of the two bundles through ``python -m monai.bundle``, and the
model-zoo checks: metadata schema, network input/output, TorchScript and ONNX export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bundle_utils import BUNDLES, bundle_scripts
from evaluation.runner import BundleRunError, Runner
from preprocessing.schema import preset

FAST = dict(widen_factor=0.0625, batch_size=4, val_fold=1, test_fold=2)  # train fold 0 only
SPLIT = {k: v for k, v in FAST.items() if k != "widen_factor"}  # what a run after training may set
DIM = 32  # representation width at widen_factor 0.0625


def _ids(prepared: Path, folds) -> list[str]:
    entries = json.loads((prepared / "datalist.json").read_text())["training"]
    return sorted(e["id"] for e in entries if e["fold"] in folds)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fake_prepared):
    """Teacher trained, exported; dual-task trained on its representations (1 epoch each),
    every run started from an unrelated working directory."""
    work = tmp_path_factory.mktemp("bundle_runs")
    runner = Runner(fake_prepared, work, "cpu", epochs=1)
    teacher, dual = work / "teacher", work / "dualtask"
    features = teacher / "models" / "teacher_features.csv"
    cwd = os.getcwd()
    os.chdir(work)
    try:
        runner.run_bundle("pcr_teacher", ("train",), teacher / "train.log", ckpt_dir=teacher / "models",
                          output_dir=teacher / "eval", **FAST)
        runner.run_bundle("pcr_teacher", ("train", "export"), teacher / "export.log", ckpt_dir=teacher / "models",
                          output_dir=teacher / "eval", teacher_features=features, **FAST)
        runner.run_bundle("pcr_dualtask", ("train",), dual / "train.log", ckpt_dir=dual / "models",
                          output_dir=dual / "eval", teacher_features=features, **FAST)
    finally:
        os.chdir(cwd)
    return SimpleNamespace(runner=runner, teacher=teacher, dual=dual, features=features, data=fake_prepared)


def test_training_saves_best_checkpoint_with_training_fold_age_statistics(trained):
    entries = json.loads((trained.data / "datalist.json").read_text())["training"]
    train_ages = [e["clinical"]["age"] for e in entries if e["fold"] == 0]
    all_ages = [e["clinical"]["age"] for e in entries]
    for run in (trained.teacher, trained.dual):
        checkpoint = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
        state = checkpoint["model"]
        assert checkpoint["settings"]["widen_factor"] == 0.0625 and checkpoint["settings"]["channels"] == 3
        assert checkpoint["settings"]["visits"] == (["T0", "T1", "T2"] if run == trained.teacher else ["T0", "T1"])
        assert float(state["clinical.age_mean"]) == pytest.approx(np.mean(train_ages))
        assert float(state["clinical.age_mean"]) != pytest.approx(np.mean(all_ages))
        assert list((run / "eval").glob("events.out.tfevents.*")), "TensorBoard events missing"


def test_export_writes_t2_representations_of_training_and_validation_patients_only(trained):
    table = pd.read_csv(trained.features, dtype={"id": str})
    assert sorted(table["id"]) == _ids(trained.data, (0, 1))
    assert table.shape[1] == 1 + DIM and np.isfinite(table.iloc[:, 1:].to_numpy()).all()
    sidecar = json.loads(Path(str(trained.features) + ".json").read_text())
    assert (sidecar["train_folds"], sidecar["val_fold"], sidecar["test_fold"]) == ([0], 1, 2)
    assert sidecar["dim"] == DIM and sidecar["visit"] == "T2"


@pytest.mark.parametrize("bundle,extra", [("pcr_teacher", ()), ("pcr_teacher", ("t0_t1",)), ("pcr_dualtask", ())])
def test_evaluate_writes_test_fold_predictions(trained, bundle, extra, tmp_path):
    run = trained.teacher if bundle == "pcr_teacher" else trained.dual
    # no width given: the checkpoint's (0.0625) replaces the CPU profile's (0.125)
    trained.runner.run_bundle(bundle, ("train", "evaluate") + extra, tmp_path / "log", ckpt_dir=run / "models",
                              output_dir=tmp_path, teacher_features=trained.features, **SPLIT)
    predictions = pd.read_csv(tmp_path / "predictions.csv", dtype={"id": str})
    assert list(predictions.columns) == ["id", "probability", "label"]
    assert sorted(predictions["id"]) == _ids(trained.data, (2,))
    assert predictions["probability"].between(0, 1).all()
    assert (tmp_path / "metrics.csv").is_file()


def _without_t2(prepared: Path, dest: Path) -> Path:
    shutil.copytree(prepared, dest)
    datalist = json.loads((dest / "datalist.json").read_text())
    for entry in datalist["training"]:
        (dest / entry.pop("T2")).unlink()
        entry.pop("label")
    (dest / "datalist.json").write_text(json.dumps(datalist))
    return dest


def test_dualtask_inference_needs_no_t2_image_and_no_label(trained, tmp_path):
    early = _without_t2(trained.data, tmp_path / "early")
    trained.runner.run_bundle("pcr_dualtask", ("inference",), tmp_path / "log", dataset_dir=early,
                              ckpt_dir=trained.dual / "models", output_dir=tmp_path / "out")
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", dtype={"id": str})
    assert list(predictions.columns) == ["id", "probability"]
    assert sorted(predictions["id"]) == _ids(trained.data, (0, 1, 2))


def test_teacher_inference(trained, tmp_path):
    trained.runner.run_bundle("pcr_teacher", ("inference",), tmp_path / "log", ckpt_dir=trained.teacher / "models",
                              output_dir=tmp_path, infer_folds="[2]")
    assert sorted(pd.read_csv(tmp_path / "predictions.csv", dtype={"id": str})["id"]) == _ids(trained.data, (2,))


def test_dualtask_refuses_missing_teacher_features(trained, tmp_path):
    with pytest.raises(BundleRunError, match="teacher representations .* not found"):
        trained.runner.run_bundle("pcr_dualtask", ("train",), tmp_path / "log", ckpt_dir=tmp_path,
                                  output_dir=tmp_path, teacher_features=tmp_path / "none.csv", **FAST)


def test_missing_dataset_is_a_clear_error(trained, tmp_path):
    runner = Runner(tmp_path / "nowhere", tmp_path, "cpu", epochs=1)
    with pytest.raises(BundleRunError, match="nowhere/datalist.json: not found"):
        runner.run_bundle("pcr_teacher", ("train",), tmp_path / "log", ckpt_dir=tmp_path, output_dir=tmp_path, **FAST)


BLOCK_PROJECT = ("import runpy, sys; "
                 "sys.modules.update(preprocessing=None, evaluation=None, fl_jobs=None); "
                 "sys.argv[0] = 'monai.bundle'; runpy.run_module('monai.bundle', run_name='__main__')")


def test_bundle_copied_alone_runs_without_project_packages(trained, tmp_path):
    bundle = Path(shutil.copytree(BUNDLES / "pcr_dualtask", tmp_path / "elsewhere" / "pcr_dualtask"))
    command = [sys.executable, "-c", BLOCK_PROJECT, "run", "--bundle_root", str(bundle),
               "--config_file", str(bundle / "configs" / "inference.json"), "--dataset_dir", str(trained.data),
               "--ckpt_dir", str(trained.dual / "models"), "--output_dir", str(tmp_path / "out"),
               "--num_workers", "0"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == len(_ids(trained.data, (0, 1, 2)))


def _monai_bundle(*args, cwd, pythonpath=None):
    env = dict(os.environ, PYTHONPATH=str(pythonpath)) if pythonpath else None
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


PAPER_SETTINGS = {"clinical_fields": preset("synthetic").field_record(),
                  "widen_factor": 1.0, "channels": 3, "visits": ["T0", "T1"], "lstm_layers": 2, "rnn_layers": 2,
                  "use_clinical": True, "use_subtype": True, "spatial_size": None}


@pytest.mark.parametrize("bundle", ["pcr_teacher", "pcr_dualtask"])
def test_metadata_and_network_io_verify(bundle, tmp_path):
    root = BUNDLES / bundle
    _monai_bundle("verify_metadata", "--meta_file", root / "configs/metadata.json",
                  "--filepath", BUNDLES / "meta_schema.json", cwd=tmp_path)
    # verify_net_in_out builds network_def without running `initialize`, so the bundle goes on PYTHONPATH;
    # with no trained checkpoint and no cohort, the paper's settings are given in place of the checkpoint's
    _monai_bundle("verify_net_in_out", "--net_id", "network_def", "--meta_file", root / "configs/metadata.json",
                  "--config_file", root / "configs/inference.json", "--bundle_root", root,
                  "--model_settings", repr(PAPER_SETTINGS), cwd=tmp_path, pythonpath=root)


@pytest.mark.parametrize("bundle,visits", [("pcr_teacher", 3), ("pcr_dualtask", 2)])
def test_torchscript_and_onnx_export_match_the_network(trained, bundle, visits, tmp_path):
    import onnxruntime

    root = BUNDLES / bundle
    checkpoint = (trained.teacher if bundle == "pcr_teacher" else trained.dual) / "models" / "model.pt"
    # no width or profile given: the network is built from the checkpoint's settings
    _monai_bundle("ckpt_export", "--net_id", "network_def", "--filepath", tmp_path / "model.ts",
                  "--ckpt_file", checkpoint, "--key_in_ckpt", "model", "--meta_file", root / "configs/metadata.json",
                  "--config_file", root / "configs/inference.json", "--bundle_root", root,
                  "--ckpt_dir", checkpoint.parent, cwd=tmp_path, pythonpath=root)
    image, clinical = torch.rand(2, 3 * visits, 32, 32, 32), torch.rand(2, 28) * 50
    with bundle_scripts(bundle) as s:
        cls = s.networks.PCRTeacher if bundle == "pcr_teacher" else s.networks.DualTaskNet
        net = cls(PAPER_SETTINGS["clinical_fields"], widen_factor=0.0625).eval()
        net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
        s.onnx_export.export_onnx(net, str(tmp_path / "model.onnx"), visits=visits)
        with torch.no_grad():
            expected = net(image, clinical).numpy()
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(image, clinical).numpy(), expected, rtol=1e-4, atol=1e-5)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    onnx_out = session.run(None, {"image": image.numpy(), "clinical": clinical.numpy()})[0]
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)


def test_mlflow_tracking(trained, tmp_path):
    import mlflow

    trained.runner.run_bundle("pcr_teacher", ("train",), tmp_path / "log", ckpt_dir=tmp_path / "models",
                              output_dir=tmp_path / "eval", tracking="mlflow", **FAST)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and {"metrics.val_loss", "metrics.val_auc", "metrics.train_loss"} <= set(runs.columns)


@pytest.mark.parametrize("bundle", ["pcr_teacher", "pcr_dualtask"])
def test_monai_fl_client_drives_the_bundle(trained, bundle, tmp_path):
    """The layout NVFlare's MonaiAlgo needs: initialize, train one local epoch from global weights,
    send weight differences, evaluate global weights."""
    from monai.fl.client import MonaiAlgo
    from monai.fl.utils.constants import ExtraItems, WeightType
    from monai.fl.utils.exchange_object import ExchangeObject

    from bundle_utils import forget_scripts

    settings = dict(dataset_dir=str(trained.data), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
                    teacher_features=str(trained.features), **FAST)
    configs = ["configs/train.json", "configs/profile_cpu.json"]
    algo = MonaiAlgo(bundle_root=str(BUNDLES / bundle), local_epochs=1, config_train_filename=configs,
                     config_evaluate_filename=configs + ["configs/evaluate.json"], config_filters_filename=None,
                     train_kwargs=settings, eval_kwargs={**settings, "model_settings": {
                         **PAPER_SETTINGS, "widen_factor": FAST["widen_factor"],
                         "visits": ["T0", "T1", "T2"] if bundle == "pcr_teacher" else ["T0", "T1"]}})
    try:
        algo.initialize(extra={ExtraItems.CLIENT_NAME: "site-1", ExtraItems.APP_ROOT: str(tmp_path)})
        network = algo.trainer.network
        global_weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
        algo.train(data=ExchangeObject(weights=global_weights, weight_type=WeightType.WEIGHTS))
        update = algo.get_weights()
        assert update.weight_type == WeightType.WEIGHT_DIFF and update.statistics["num_executed_iterations"] > 0
        assert set(update.weights) == set(global_weights)
        local = {k: v.detach().clone() for k, v in network.state_dict().items()}
        metrics = algo.evaluate(data=ExchangeObject(weights=local, weight_type=WeightType.WEIGHTS)).metrics
        assert np.isfinite(metrics["val_loss"]) and 0 <= metrics["val_auc"] <= 1
    finally:
        algo.finalize()
        forget_scripts(str(BUNDLES / bundle))
