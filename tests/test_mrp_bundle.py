"""The MRP fusion bundle on a tiny multimodal synthetic cohort (synthesised and prepared once):
what its data transforms do, then 1-epoch runs of its three models through
``python -m monai.bundle run`` (train, evaluate, ensemble weight, inference)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, bundle_scripts
from preprocessing.prepare import Options, prepare
from preprocessing.synth import synthesize

BUNDLE = BUNDLES / "mrp_fusion"
MG_SIZE = (32, 16)
# 12 patients at two sites, the second without mammography; per-site subsets of the MRI visits
COHORT = dict(patients=12, sites=2, seed=8, mammography_share=1.0, visits="realistic")
FAST = dict(widen_factor=0.0625, batch_size=4, epochs=1, num_workers=0, mg_size=list(MG_SIZE))
ALL_VISITS = ["T0", "T1", "T2", "T3"]


def _split(entries: list[dict]) -> tuple[int, int]:
    """Validation and test folds on which every model can train and be checked: both classes among
    the training patients with mammograms and in the validation fold (the ensemble weight), a
    mammography patient in the validation fold, and a test fold with and without mammograms."""
    folds = sorted({e["fold"] for e in entries})
    for val, test in itertools.permutations(folds, 2):
        def labels(cond):
            return {e["label"] for e in entries if cond(e)}
        train_mg = labels(lambda e: e["fold"] not in (val, test) and e.get("mammograms"))
        val_all, val_mg = labels(lambda e: e["fold"] == val), labels(lambda e: e["fold"] == val and e.get("mammograms"))
        test_mg = {bool(e.get("mammograms")) for e in entries if e["fold"] == test}
        if train_mg == val_all == {0, 1} and val_mg and test_mg == {True, False}:
            return val, test
    raise AssertionError("the tiny cohort allows no split for the bundle runs; change COHORT")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mrp_cohort")
    synthesize(root / "raw", workers=2, **COHORT)
    datalist = prepare(root / "raw", root / "prepared", Options(size=16, spacing=4.0, required_visits=("T0",)),
                       workers=2, mg_size=MG_SIZE)
    entries = datalist["training"]
    val, test = _split(entries)
    return SimpleNamespace(path=root / "prepared", datalist=datalist, entries=entries, val=val, test=test,
                           train=sorted({e["fold"] for e in entries} - {val, test}))


@pytest.fixture(scope="module")
def s():
    with bundle_scripts("mrp_fusion") as scripts:
        yield scripts


def _items(s, cohort, model, **kwargs):
    entries = s.data.load_datalist(str(cohort.path))
    return s.data.select(entries, model, None, cohort.datalist["clinical_fields"], **kwargs)


def _subtraction(path: str) -> np.ndarray:
    """The subtraction channel of a prepared visit in RAS, scaled as the bundle scales it."""
    image = nib.as_closest_canonical(nib.load(path))
    return image.get_fdata(dtype=np.float32)[..., 4] / 100.0


def _patient(cohort, visits: set[str]) -> dict:
    for entry in cohort.entries:
        if set(entry["ftv_ml"]) == visits:
            return entry
    pytest.skip(f"no patient with visits {sorted(visits)} in the tiny cohort")


def test_cohort_has_what_the_bundle_reads(cohort):
    assert cohort.datalist["channels"][4] == "subtraction"
    assert any(set(e["ftv_ml"]) != set(ALL_VISITS) for e in cohort.entries)  # some patients miss visits
    assert any("mammograms" not in e for e in cohort.entries) and any("mammograms" in e for e in cohort.entries)


# --- data: which images reach each network ---------------------------------------------------


def test_mri_items_hold_only_the_visits_a_patient_has(s, cohort, tmp_path):
    items = {i["id"]: i for i in _items(s, cohort, "imr", visits=ALL_VISITS)}
    assert set(items) == {e["id"] for e in cohort.entries}  # every prepared patient has an MRI visit
    for entry in cohort.entries:
        assert {k for k in items[entry["id"]] if k in ALL_VISITS} == set(entry["ftv_ml"])
    # a configured subset: only those visits; a patient with none of them is excluded with its reason
    without_t1 = [e for e in cohort.entries if "T1" not in e["ftv_ml"]]
    assert without_t1, "the tiny cohort should have a patient without T1"
    subset = _items(s, cohort, "imr", visits=["T1", "T2"], model_visits=ALL_VISITS,
                    exclusions=str(tmp_path / "excluded.csv"))
    assert {i["id"] for i in subset} == {e["id"] for e in cohort.entries if "T1" in e["ftv_ml"] or "T2" in e["ftv_ml"]}
    assert all(set(i) & set(ALL_VISITS) <= {"T1", "T2"} for i in subset)
    with open(tmp_path / "excluded.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {e["id"] for e in without_t1 if "T2" not in e["ftv_ml"]}
    assert all(r["reason"].startswith("no MRI visit among T1, T2 (has: T0") for r in rows)
    with pytest.raises(ValueError, match="T5 are not among the model's visits"):
        _items(s, cohort, "imr", visits=["T0", "T5"], model_visits=ALL_VISITS)


def test_mammography_items_exclude_patients_without_mammograms_with_the_reason(s, cohort, tmp_path):
    items = _items(s, cohort, "img", exclusions=str(tmp_path / "excluded.csv"))
    with_mg = {e["id"] for e in cohort.entries if e.get("mammograms")}
    assert {i["id"] for i in items} == with_mg
    with open(tmp_path / "excluded.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == {e["id"] for e in cohort.entries} - with_mg
    assert {r["reason"] for r in rows} == {"no pre-treatment mammogram"}
    item = items[0]
    assert {k for k in item if k.startswith("mg_")} == {"mg_L_CC", "mg_L_MLO", "mg_R_CC", "mg_R_MLO"}
    assert item["rhpc_index"].dtype == np.int64 and item["rhpc_index"].shape == (19,)
    assert item["age"].dtype == np.float32 and item["label"].shape == (1,)


def test_mri_transforms_stack_the_subtraction_of_each_visit_in_its_slot(s, cohort):
    entry = _patient(cohort, {"T0", "T3"})
    item = next(i for i in _items(s, cohort, "imr", visits=ALL_VISITS) if i["id"] == entry["id"])
    phases = {"T0": "pre", "T1": "mid", "T2": "mid", "T3": "post"}
    index = s.data.channel_index(str(cohort.path), "subtraction")
    transform = s.data.load_transforms("imr", ALL_VISITS, phases, index, None) + s.data.final_transforms("imr")
    out = item
    for t in transform:
        out = t(out)
    assert out["image"].shape == (4, 1, 16, 16, 16) and out["image"].dtype == torch.float32
    assert out["visit_mask"].tolist() == [1, 0, 0, 1]
    assert out["phase"].tolist() == [0, 1, 1, 2]  # pre = T0, mid = T1 and T2, post = T3
    for slot, visit in ((0, "T0"), (3, "T3")):
        np.testing.assert_allclose(out["image"][slot, 0].numpy(), _subtraction(item[visit]), rtol=1e-5, atol=1e-5)
    assert not out["image"][1:3].any()  # missing visits are zeros (and never reach the ResNet)
    assert not set(out) & set(ALL_VISITS)
    # the CPU profile's size: area resampling of the same image
    small = item
    for t in s.data.load_transforms("imr", ALL_VISITS, phases, index, [8, 8, 8]):
        small = t(small)
    assert small["image"].shape == (4, 8, 8, 8)
    assert float(small["image"][0].mean()) == pytest.approx(float(_subtraction(item["T0"]).mean()), rel=1e-4)


def test_mammogram_transforms_stack_the_views_in_network_order(s, cohort):
    items = _items(s, cohort, "img")
    item = dict(items[0])
    del item["mg_R_CC"]  # a patient missing one view
    out = item
    for t in s.data.load_transforms("img") + s.data.final_transforms("img"):
        out = t(out)
    assert out["image"].shape == (4, 1) + MG_SIZE and out["view_mask"].tolist() == [1, 1, 0, 1]
    for slot, view in enumerate(s.networks.VIEWS):
        if view != "R_CC":
            expected = nib.load(items[0][f"mg_{view}"]).get_fdata(dtype=np.float32)
            np.testing.assert_array_equal(out["image"][slot, 0].numpy(), expected)
    assert not out["image"][2].any()


def test_random_visit_subsets_are_non_empty_available_and_vary(s):
    subset = s.data.RandVisitSubsetd()
    subset.set_random_state(0)
    image = torch.arange(1, 5, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 2, 2, 2).clone()
    item = {"image": image, "visit_mask": np.array([1, 0, 1, 1], dtype=np.float32)}
    seen = Counter()
    for _ in range(1400):
        out = subset(item)
        mask = out["visit_mask"]
        assert mask.sum() >= 1 and not mask[1]  # never empty, only available visits
        kept = mask > 0
        assert torch.equal(out["image"][torch.as_tensor(kept)], image[torch.as_tensor(kept)])
        assert not out["image"][torch.as_tensor(~kept)].any()  # dropped visits are zeroed
        seen[tuple(mask.astype(int))] += 1
    assert item["visit_mask"].tolist() == [1, 0, 1, 1]  # the input item is not changed
    assert len(seen) == 7  # every non-empty subset of the three available visits
    assert all(150 < n < 250 for n in seen.values())  # uniformly (1400 / 7 = 200 each)


def test_per_phase_visit_subsets_draw_each_phase_as_often(s):
    """With ``phase_key``: a phase uniformly among those the patient has reached, then a non-empty
    subset of the visits acquired by then. Visits T0..T3 at phases pre, mid, mid, post, T1 missing:
    pre {T0} 1/3; mid: 3 subsets of {T0, T2}, 1/9 each; post: 7 subsets of {T0, T2, T3}, 1/21 each."""
    subset = s.data.RandVisitSubsetd(phase_key="phase")
    subset.set_random_state(0)
    item = {"image": torch.ones(4, 2, 2, 2), "visit_mask": np.array([1, 0, 1, 1], dtype=np.float32),
            "phase": np.array([0, 1, 1, 2])}
    n = 21000
    seen = Counter(tuple(subset(item)["visit_mask"].astype(int)) for _ in range(n))
    expected = {(1, 0, 0, 0): 1 / 3 + 1 / 9 + 1 / 21, (0, 0, 1, 0): 1 / 9 + 1 / 21, (1, 0, 1, 0): 1 / 9 + 1 / 21,
                (0, 0, 0, 1): 1 / 21, (1, 0, 0, 1): 1 / 21, (0, 0, 1, 1): 1 / 21, (1, 0, 1, 1): 1 / 21}
    assert set(seen) == set(expected)
    assert all(seen[k] / n == pytest.approx(p, abs=0.012) for k, p in expected.items())
    # a patient without the pre-treatment scan has reached mid and post only
    late = dict(item, visit_mask=np.array([0, 1, 0, 1], dtype=np.float32))
    seen = Counter(tuple(subset(late)["visit_mask"].astype(int)) for _ in range(6000))
    assert seen[(0, 1, 0, 0)] / 6000 == pytest.approx(1 / 2 + 1 / 6, abs=0.02)


def _train_config(s, cohort, tmp_path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / f) for f in ("train.json", "profile_cpu.json")])
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(cohort.path), "output_dir": str(tmp_path),
                   "ckpt_dir": str(tmp_path), "val_fold": cohort.val, "test_fold": cohort.test,
                   **{k: v for k, v in FAST.items() if k != "epochs"}, **overrides})
    return parser


def test_training_loader_draws_new_visit_subsets_each_epoch(s, cohort, tmp_path):
    parser = _train_config(s, cohort, tmp_path, model="imr", batch_size=1)
    dataset = parser.get_parsed_content("train#dataset")
    full = {i["id"]: set(k for k in i if k in ALL_VISITS) for i in dataset.data}
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False)
    epochs = []
    for _ in range(6):
        masks = {}
        for batch in loader:
            assert batch["image"].shape == (1, 4, 1, 16, 16, 16)
            mask = batch["visit_mask"][0]
            available = [ALL_VISITS.index(v) for v in full[batch["id"][0]]]
            assert mask.sum() >= 1 and set(torch.nonzero(mask).flatten().tolist()) <= set(available)
            assert batch["phase"][0].tolist() == [0, 1, 1, 2]
            masks[batch["id"][0]] = tuple(mask.int().tolist())
        epochs.append(masks)
    several = [i for i, v in full.items() if len(v) > 1]
    assert several and any(len({e[i] for e in epochs}) > 1 for i in several)  # subsets change across epochs
    visits_of = {e["id"]: set(e["ftv_ml"]) for e in cohort.entries}
    for item in parser.get_parsed_content("validate#dataset"):  # validation: every visit the patient has
        assert item["visit_mask"].tolist() == [float(v in visits_of[item["id"]]) for v in ALL_VISITS]


@pytest.mark.parametrize("model", ["rhpc", "imr", "img"])
def test_optimizer_trains_the_response_head_faster_in_the_cpu_profile(s, cohort, tmp_path, model):
    """The CPU profile trains each image model's response classifier (``head``) at 10x the learning
    rate (the rhpc model at 1x: its head reads only rhpc features, and a faster one overfits them);
    every weight is in exactly one group."""
    parser = _train_config(s, cohort, tmp_path, model=model)
    network, optimizer = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    factor = 1.0 if model == "rhpc" else 10.0
    assert parser.get_parsed_content("head_lr_factor") == factor
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in network.parameters())
    head = {id(p) for p in network.head.parameters()}
    rate = parser.get_parsed_content("learning_rate")
    for group in optimizer.param_groups:
        assert all(group["lr"] == pytest.approx(rate * (factor if id(p) in head else 1.0)) for p in group["params"])


@pytest.mark.parametrize("profile_momentum", [0.05, None])
def test_cpu_profile_validates_and_saves_the_moving_average_of_the_weights(s, cohort, tmp_path, profile_momentum):
    """One optimiser step (the rhpc model, one batch of every training patient): under the CPU profile
    the validator scores, and the checkpoint keeps, 0.95 x the initial + 0.05 x the trained weights;
    with the average off (``train.json``'s own setting) the trained weights themselves."""
    from monai.bundle import ConfigParser

    assert ConfigParser.load_config_file(str(BUNDLE / "configs" / "train.json"))["ema_momentum"] is None
    off = {} if profile_momentum else {"ema_momentum": None}
    parser = _train_config(s, cohort, tmp_path, model="rhpc", batch_size=len(cohort.entries), epochs=1, **off)
    assert parser.get_parsed_content("ema_momentum") == profile_momentum
    network = parser.get_parsed_content("network")
    initial = network.head.weight.detach().clone()
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.state.iteration == 1
    ema = parser.get_parsed_content("ema")
    assert parser.get_parsed_content("validate#evaluator").network is (ema.ema_model if profile_momentum else network)
    trained = network.head.weight.detach()
    assert not torch.allclose(trained, initial)
    saved = torch.load(tmp_path / "model_rhpc.pt", map_location="cpu", weights_only=True)["model"]["head.weight"]
    m = profile_momentum or 1.0
    torch.testing.assert_close(saved, (1 - m) * initial + m * trained)


def test_spatial_augmentation_moves_every_visit_alike(s, cohort, tmp_path):
    parser = _train_config(s, cohort, tmp_path, model="imr", noise_std=0.0)
    transform = parser.get_parsed_content("train#preprocessing")
    entry = _patient(cohort, set(ALL_VISITS))
    item = next(i for i in _items(s, cohort, "imr", visits=ALL_VISITS) if i["id"] == entry["id"])
    item = {**item, "T1": item["T0"], "T2": item["T0"]}  # three visits with the same image
    transform.set_random_state(3)
    for _ in range(5):
        out = transform(dict(item))
        kept = [k for k in range(3) if out["visit_mask"][k]]
        assert out["image"].shape == (4, 1, 16, 16, 16)
        for k in kept[1:]:
            torch.testing.assert_close(out["image"][k], out["image"][kept[0]])


def test_prepare_batch_gives_each_network_its_arguments(s):
    batch = {"image": torch.zeros(2, 4, 1, 8, 8, 8), "visit_mask": torch.ones(2, 4), "phase": torch.zeros(2, 4),
             "view_mask": torch.ones(2, 4), "rhpc_index": torch.zeros(2, 19, dtype=torch.long),
             "age": torch.ones(2, 1), "rhpc_target": torch.zeros(2, 19), "label": torch.ones(2, 1)}
    image, label, args, kwargs = s.engine.PrepareBatchInputs("imr")(batch)
    assert image is batch["image"] and label is batch["label"] and kwargs == {}
    assert [a is batch[k] for a, k in zip(args, ("visit_mask", "phase", "rhpc_index", "age"))] == [True] * 4
    image, target, args, _ = s.engine.PrepareBatchInputs("rhpc", ["label", "rhpc_target", "age"])(batch)
    assert image is batch["rhpc_index"] and args == (batch["age"],) and set(target) == {"label", "rhpc_target", "age"}
    _, label, args, _ = s.engine.PrepareBatchInputs("img")({k: v for k, v in batch.items() if k != "label"})
    assert label is None and len(args) == 3


# --- bundle runs -----------------------------------------------------------------------------


def _run(configs, log: Path, cwd: Path, **overrides) -> None:
    files = [str(BUNDLE / "configs" / f"{c}.json") for c in configs]
    command = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE), "--config_file", repr(files),
               "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
               "--logging_file", str(BUNDLE / "configs" / "logging.conf")]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as stream:
        done = subprocess.run(command, cwd=cwd, stdout=stream, stderr=subprocess.STDOUT, env=env)
    assert done.returncode == 0, log.read_text()[-3000:]


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cohort):
    """The three models trained for one epoch (CPU profile), and the ablations of iMRrhpc; every
    run from an unrelated working directory."""
    work = tmp_path_factory.mktemp("mrp_runs")
    split = dict(dataset_dir=cohort.path, val_fold=cohort.val, test_fold=cohort.test)
    models, ablation = work / "models", work / "ablation"
    for model in ("rhpc", "imr", "img"):
        _run(("train", "profile_cpu"), work / f"train_{model}.log", work, model=model, ckpt_dir=models,
             output_dir=work / f"train_{model}", **split, **FAST)
    _run(("train", "profile_cpu", "no_knowledge", "no_time_embedding"), work / "train_ablation.log", work,
         model="imr", ckpt_dir=ablation, output_dir=work / "train_ablation", **split, **FAST)
    return SimpleNamespace(work=work, models=models, ablation=ablation, split=split)


def test_training_saves_checkpoints_with_their_settings_and_training_fold_ages(trained, cohort):
    train_entries = [e for e in cohort.entries if e["fold"] in cohort.train]
    for model, prefix in (("rhpc", "extractor"), ("imr", "rhpc"), ("img", "rhpc")):
        checkpoint = torch.load(trained.models / f"model_{model}.pt", map_location="cpu", weights_only=True)
        settings = checkpoint["settings"]
        assert settings["model"] == model and settings["widen_factor"] == FAST["widen_factor"]
        assert settings["visits"] == ALL_VISITS and settings["channel"] == "subtraction"
        assert settings["visit_phases"] == {"T0": "pre", "T1": "mid", "T2": "mid", "T3": "post"}
        assert settings["spatial_size"] == [16, 16, 16] and settings["mg_size"] == list(MG_SIZE)
        assert settings["clinical_fields"] == cohort.datalist["clinical_fields"]
        ages = [e["clinical"]["age"] for e in train_entries if model != "img" or e.get("mammograms")]
        assert float(checkpoint["model"][f"{prefix}.age_mean"]) == pytest.approx(np.mean(ages))
    assert list((trained.work / "train_imr").glob("events.out.tfevents.*"))
    excluded = _csv(trained.work / "train_img" / "excluded_img_train.csv")
    assert {r["id"] for r in excluded} == {e["id"] for e in train_entries if not e.get("mammograms")}
    ablated = torch.load(trained.ablation / "model_imr.pt", map_location="cpu", weights_only=True)
    assert not ablated["settings"]["knowledge_predictor"] and not ablated["settings"]["time_embedding"]
    assert not any(k.startswith(("knowledge.", "encoder.embed.")) for k in ablated["model"])


@pytest.mark.parametrize("model,ckpt", [("rhpc", "models"), ("imr", "models"), ("img", "models"), ("imr", "ablation")])
def test_evaluate_writes_test_fold_predictions(trained, cohort, model, ckpt, tmp_path):
    # no width, size or flag given: the checkpoint's replace the CPU profile's
    _run(("train", "profile_cpu", "evaluate"), tmp_path / "log", tmp_path, model=model,
         ckpt_dir=getattr(trained, ckpt), output_dir=tmp_path, num_workers=0, **trained.split)
    rows = _csv(tmp_path / "predictions.csv")
    test = [e for e in cohort.entries if e["fold"] == cohort.test and (model != "img" or e.get("mammograms"))]
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in test)
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert {r["id"]: int(r["label"]) for r in rows} == {e["id"]: e["label"] for e in test}
    assert (tmp_path / "metrics.csv").is_file()


def test_evaluate_on_a_subset_of_the_visits(trained, cohort, tmp_path):
    _run(("train", "profile_cpu", "evaluate"), tmp_path / "log", tmp_path, model="imr", ckpt_dir=trained.models,
         output_dir=tmp_path, num_workers=0, eval_visits="['T0']", **trained.split)
    rows = _csv(tmp_path / "predictions.csv")
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in cohort.entries if e["fold"] == cohort.test)


@pytest.fixture(scope="module")
def ensembled(trained, cohort):
    """The MRP ensemble weight chosen on the validation fold (``ensemble.json``)."""
    _run(("inference", "ensemble"), trained.work / "ensemble.log", trained.work, ckpt_dir=trained.models,
         output_dir=trained.work / "ensemble", num_workers=0, **trained.split)
    return json.loads((trained.models / "ensemble.json").read_text())


def test_ensemble_weight_and_mrp_inference(trained, ensembled, cohort, tmp_path):
    record = ensembled
    val = [e for e in cohort.entries if e["fold"] == cohort.val]
    assert 0 <= record["weight"] <= 1 and record["val_fold"] == cohort.val and record["patients"] == len(val)
    assert record["patients_with_both"] == sum(bool(e.get("mammograms")) for e in val)
    assert {r["id"] for r in _csv(trained.work / "ensemble" / "predictions_imr.csv")} == {e["id"] for e in val}

    out = tmp_path / "inference"
    _run(("inference",), tmp_path / "inference.log", tmp_path, ckpt_dir=trained.models, output_dir=out,
         dataset_dir=cohort.path, infer_folds=f"[{cohort.test}]", num_workers=0)
    rows = {r["id"]: r for r in _csv(out / "predictions.csv")}
    test = [e for e in cohort.entries if e["fold"] == cohort.test]
    assert list(next(iter(rows.values())))[:3] == ["id", "probability", "models_used"]
    assert sorted(rows) == sorted(e["id"] for e in test)  # every test patient
    assert all(0 <= float(r["probability"]) <= 1 for r in rows.values())
    mr = {r["id"]: float(r["probability"]) for r in _csv(out / "predictions_imr.csv")}
    mg = {r["id"]: float(r["probability"]) for r in _csv(out / "predictions_img.csv")}
    w = record["weight"]
    for entry in test:
        row = rows[entry["id"]]
        if entry.get("mammograms"):
            assert row["models_used"] == "imr+img"
            assert float(row["probability"]) == pytest.approx(w * mg[entry["id"]] + (1 - w) * mr[entry["id"]],
                                                              abs=1e-5)
        else:  # a patient without mammograms: the MRI model alone
            assert row["models_used"] == "imr" and entry["id"] not in mg
            assert float(row["probability"]) == pytest.approx(mr[entry["id"]], abs=1e-5)


def test_inference_falls_back_on_the_rhpc_model(s, trained, ensembled, cohort, tmp_path):
    """A patient with neither an MRI visit nor a mammogram: the rhpc model's probability when
    models/model_rhpc.pt exists (``models_used`` rhpc), else excluded with its fold and reason."""
    data = tmp_path / "cohort"  # the cohort with one test patient without mammograms stripped of its MRI visits
    data.mkdir()
    (data / "images").symlink_to(cohort.path / "images")
    datalist = json.loads((cohort.path / "datalist.json").read_text())
    bare = next(e for e in datalist["training"] if e["fold"] == cohort.test and not e.get("mammograms"))
    for visit in ALL_VISITS:
        bare.pop(visit, None)
    (data / "datalist.json").write_text(json.dumps(datalist))
    test = sorted(e["id"] for e in datalist["training"] if e["fold"] == cohort.test)
    run = dict(dataset_dir=data, infer_folds=f"[{cohort.test}]", num_workers=0)

    out = tmp_path / "with_rhpc"
    _run(("inference",), tmp_path / "with_rhpc.log", tmp_path, ckpt_dir=trained.models, output_dir=out, **run)
    rows = {r["id"]: r for r in _csv(out / "predictions.csv")}
    assert sorted(rows) == test
    assert {i for i, r in rows.items() if r["models_used"] == "rhpc"} == {bare["id"]}
    assert [r["id"] for r in _csv(out / "predictions_rhpc.csv")] == [bare["id"]] and _csv(out / "excluded.csv") == []
    checkpoint = torch.load(trained.models / "model_rhpc.pt", map_location="cpu", weights_only=True)
    net = s.checkpoint.network_from_settings(checkpoint["settings"]).eval()
    net.load_state_dict(checkpoint["model"])
    item = s.data.select([bare], "rhpc", None, checkpoint["settings"]["clinical_fields"])[0]
    with torch.no_grad():
        logit = net(torch.as_tensor(item["rhpc_index"])[None], torch.as_tensor(item["age"])[None])
    assert float(rows[bare["id"]]["probability"]) == pytest.approx(torch.sigmoid(logit).item(), abs=1e-5)
    assert int(rows[bare["id"]]["label"]) == bare["label"]

    models = tmp_path / "models"  # the same image models and weight, no rhpc model
    models.mkdir()
    for name in ("model_imr.pt", "model_img.pt", "ensemble.json"):
        (models / name).symlink_to(trained.models / name)
    out = tmp_path / "without_rhpc"
    _run(("inference",), tmp_path / "without_rhpc.log", tmp_path, ckpt_dir=models, output_dir=out, **run)
    assert _csv(out / "predictions.csv") == [r for i, r in sorted(rows.items()) if i != bare["id"]]
    assert _csv(out / "excluded.csv") == [{
        "id": bare["id"], "fold": str(cohort.test),
        "reason": f"no MRI visit among {', '.join(ALL_VISITS)} and no mammogram; no rhpc model to fall back on "
                  f"({models / 'model_rhpc.pt'} not found)"}]
    assert f"patient {bare['id']}: no MRI visit among" in (tmp_path / "without_rhpc.log").read_text()


def test_inference_without_an_ensemble_weight_is_a_clear_error(trained, cohort, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for model in ("imr", "img"):
        (models / f"model_{model}.pt").symlink_to(trained.models / f"model_{model}.pt")
    files = [str(BUNDLE / "configs" / "inference.json")]
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE),
                           "--config_file", repr(files), "--dataset_dir", str(cohort.path), "--ckpt_dir", str(models),
                           "--output_dir", str(tmp_path), "--num_workers", "0"],
                          cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0 and "no ensemble weight; run configs/ensemble.json" in done.stdout + done.stderr


BLOCK_PROJECT = ("import runpy, sys; "
                 "sys.modules.update(preprocessing=None, evaluation=None, fl_jobs=None); "
                 "sys.argv[0] = 'monai.bundle'; runpy.run_module('monai.bundle', run_name='__main__')")


def test_bundle_copied_alone_runs_without_project_packages(trained, ensembled, cohort, tmp_path):
    bundle = Path(shutil.copytree(BUNDLE, tmp_path / "elsewhere" / "mrp_fusion"))
    command = [sys.executable, "-c", BLOCK_PROJECT, "run", "--bundle_root", str(bundle),
               "--config_file", str(bundle / "configs" / "inference.json"), "--dataset_dir", str(cohort.path),
               "--ckpt_dir", str(trained.models), "--output_dir", str(tmp_path / "out"), "--num_workers", "0"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(_csv(tmp_path / "out" / "predictions.csv")) == len(cohort.entries)


def test_metadata_verifies(tmp_path):
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                           str(BUNDLE / "configs" / "metadata.json"), "--filepath", str(BUNDLES / "meta_schema.json")],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]  # every version says what changed


def _verify_net_in_out(model: str, tmp_path: Path, **kwargs) -> None:
    """MONAI's ``verify_net_in_out`` on ``network_def`` of train.json + evaluate.json, the network
    built from the shipped settings (train.json) as a checkpoint would carry them, no cohort."""
    from monai.bundle import verify_net_in_out

    from preprocessing.schema import preset

    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    settings = {k: train[k] for k in train["model_settings"] if k != "_target_"}
    settings.update(model=model, clinical_fields=preset("synthetic").field_record())
    verify_net_in_out(net_id="network_def", meta_file=str(BUNDLE / "configs" / "metadata.json"),
                      config_file=[str(BUNDLE / "configs" / f) for f in ("train.json", "evaluate.json")],
                      device="cpu", bundle_root=str(BUNDLE), dataset_dir=str(tmp_path / "no_cohort"), model=model,
                      model_settings=settings, **kwargs)


def test_network_io_verifies_with_the_visit_axis_and_forward_arguments(s, tmp_path):
    """verify_net_in_out feeds one random ``image`` (1, num_channels, *spatial_shape) of the
    metadata and ``extra_forward_args``: iMRrhpc's image has a channel axis per visit, so the
    spatial shape gains a leading 1, and four visits need ``phase`` (T1 and T2 share one)."""
    inputs = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]
    train = json.loads((BUNDLE / "configs" / "train.json").read_text())
    image = "_meta_#network_data_format#inputs#image#"
    assert inputs["image"]["num_channels"] == len(train["visits"])
    forward = {"visit_mask": torch.ones(1, len(train["visits"])),
               "phase": torch.tensor([s.data.phase_indices(train["visits"], train["visit_phases"])]),
               "rhpc_index": torch.zeros(1, inputs["rhpc_index"]["num_channels"], dtype=torch.int64),
               "age": torch.full((1, inputs["age"]["num_channels"]), 50.0)}
    _verify_net_in_out("imr", tmp_path, extra_forward_args=forward,
                       **{image + "spatial_shape": [1, *inputs["image"]["spatial_shape"]]})
    with pytest.raises(RuntimeError, match=r"input\[1, 4, 32, 32, 32\] to have 1 channels"):
        _verify_net_in_out("imr", tmp_path, extra_forward_args=forward)  # the metadata's shape as it stands
    # iMGrhpc (not in the metadata): the four views of 128 x 64 pixels (image_classes)
    _verify_net_in_out("img", tmp_path, extra_forward_args={"view_mask": torch.ones(1, 4)},
                       **{image + "spatial_shape": [1, 128, 64]})
    # the rhpc model's input is level indices (int64); verify_net_in_out draws its input by torch.rand
    with pytest.raises(NotImplementedError, match="for 'Long'"):
        _verify_net_in_out("rhpc", tmp_path, **{image + "num_channels": inputs["rhpc_index"]["num_channels"],
                                                image + "spatial_shape": [], image + "dtype": "int64"})


def test_backbone_checkpoint_initialises_the_image_resnet_or_is_refused(s, cohort, tmp_path):
    """``backbone_ckpt`` loads a ResNet18 state dict (MedicalNet-style ``module.`` prefix and
    ``state_dict`` wrapper accepted) into the image model's backbone before training; a file that
    does not fit is refused with its name, never partly loaded."""
    donor = _train_config(s, cohort, tmp_path, model="imr", seed=1).get_parsed_content("network")
    weights = {f"module.{k}": v for k, v in donor.encoder.resnet.state_dict().items()}
    torch.save({"state_dict": weights}, tmp_path / "backbone.pth")
    network = _train_config(s, cohort, tmp_path, model="imr", backbone_ckpt=str(tmp_path / "backbone.pth")
                            ).get_parsed_content("network")
    for key, value in donor.encoder.resnet.state_dict().items():
        assert torch.equal(network.encoder.resnet.state_dict()[key], value)
    scratch = _train_config(s, cohort, tmp_path, model="imr").get_parsed_content("network")
    assert not torch.equal(scratch.encoder.resnet.conv1.weight, donor.encoder.resnet.conv1.weight)
    torch.save({k: v for k, v in weights.items() if "layer4" not in k}, tmp_path / "partial.pth")
    for model, path, message in (("imr", "partial.pth", "partial.pth does not fit the bundle's ResNet18: missing layer4"),
                                 ("rhpc", "backbone.pth", "backbone.pth: the RhpcNet model has no image backbone")):
        with pytest.raises(Exception) as raised:  # MONAI's config parser chains the bundle's error
            _train_config(s, cohort, tmp_path, model=model, backbone_ckpt=str(tmp_path / path)
                          ).get_parsed_content("network")
        assert message in str(raised.value.__cause__)


def test_medicalnet_layout_backbone_loads_with_shortcut_a_and_is_rebuilt_from_the_checkpoint(s, cohort, tmp_path):
    """MedicalNet's pretrained 3D ResNet18 has zero-padded identity shortcuts (MONAI's shortcut
    type A, the layout MONAI's own MedicalNet loader builds) and is stored as a ``state_dict`` of
    ``module.`` keys. The bundle's default (type B, convolution shortcuts) refuses it; with
    ``shortcut_type`` "A" every weight loads, and the checkpoint's settings rebuild that layout."""
    from monai.networks.nets import resnet18

    medicalnet = resnet18(spatial_dims=3, n_input_channels=1, feed_forward=False, shortcut_type="A",
                          bias_downsample=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in medicalnet.state_dict().items()}},
               tmp_path / "resnet_18_23dataset.pth")
    full = {"model": "imr", "widen_factor": 1.0, "backbone_ckpt": str(tmp_path / "resnet_18_23dataset.pth")}
    with pytest.raises(Exception) as raised:
        _train_config(s, cohort, tmp_path, **full).get_parsed_content("network")
    assert "does not fit the bundle's ResNet18: missing layer2.0.downsample" in str(raised.value.__cause__)
    parser = _train_config(s, cohort, tmp_path, **full, shortcut_type="A")
    network = parser.get_parsed_content("network")
    for key, value in medicalnet.state_dict().items():
        assert torch.equal(network.encoder.resnet.state_dict()[key], value)
    settings = parser.get_parsed_content("model_settings").state_dict()
    assert settings["shortcut_type"] == "A"
    rebuilt = s.checkpoint.network_from_settings(settings, parser.get_parsed_content("clinical_fields"))
    rebuilt.load_state_dict(network.state_dict())  # strict: the same layout
    assert s.checkpoint.network_from_settings({**settings, "shortcut_type": "B"}).state_dict().keys() \
        != network.state_dict().keys()
    # a checkpoint of a version before the option records no shortcut: it was type B
    torch.save({"settings": {k: v for k, v in settings.items() if k != "shortcut_type"}}, tmp_path / "old.pt")
    assert s.checkpoint.saved_settings(str(tmp_path / "old.pt"), "imr")["shortcut_type"] == "B"


def test_torchscript_and_onnx_export_match_the_network(s, trained, tmp_path):
    """``ckpt_export`` writes TorchScript of a trained checkpoint with no width given (the network
    built from its saved settings), and ``scripts.onnx_export`` ONNX with every input named; both
    give the network's output for any visit or view subset and batch size."""
    import onnxruntime

    rng = torch.Generator().manual_seed(0)
    for model in ("imr", "img", "rhpc"):
        checkpoint = trained.models / f"model_{model}.pt"
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        settings = saved["settings"]
        net = s.networks.mrp_network(model, settings["clinical_fields"], settings["widen_factor"]).eval()
        net.load_state_dict(saved["model"])
        size = (16, 16, 16)
        s.onnx_export.export_onnx(net, str(tmp_path / f"{model}.onnx"), model, mg_size=MG_SIZE)
        inputs = list(s.onnx_export.example_inputs(net, model, mg_size=MG_SIZE, size=size, batch=3))
        if model != "rhpc":
            inputs[0] = torch.rand(inputs[0].shape, generator=rng)
            inputs[1] = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
        with torch.no_grad():
            expected = net(*inputs).numpy()
        session = onnxruntime.InferenceSession(str(tmp_path / f"{model}.onnx"))
        names = s.onnx_export.INPUTS[model]
        onnx_out = session.run(None, {n: v.numpy() for n, v in zip(names, inputs)})[0]
        np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)
        if model == "imr":  # TorchScript through MONAI's ckpt_export, from the checkpoint's settings
            command = [sys.executable, "-m", "monai.bundle", "ckpt_export", "--net_id", "network_def",
                       "--filepath", str(tmp_path / "imr.ts"), "--ckpt_file", str(checkpoint), "--key_in_ckpt", "model",
                       "--config_file", repr([str(BUNDLE / "configs" / f) for f in ("train.json", "evaluate.json")]),
                       "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(BUNDLE),
                       "--model", "imr", "--dataset_dir", str(trained.split["dataset_dir"]), "--ckpt_dir", str(trained.models)]
            done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(BUNDLE)))
            assert done.returncode == 0, done.stderr[-3000:]
            with torch.no_grad():
                np.testing.assert_allclose(torch.jit.load(str(tmp_path / "imr.ts"))(*inputs).numpy(), expected,
                                           rtol=1e-4, atol=1e-5)


def test_mlflow_tracking(trained, cohort, tmp_path, monkeypatch):
    import mlflow

    # mlflow.set_tracking_uri (another test's) exports MLFLOW_TRACKING_URI, which the bundle run would inherit
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _run(("train", "profile_cpu"), tmp_path / "train.log", tmp_path, model="rhpc", ckpt_dir=tmp_path / "models",
         output_dir=tmp_path / "eval", tracking="mlflow", **trained.split, **FAST)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and {"metrics.val_loss", "metrics.val_auc", "metrics.train_loss"} <= set(runs.columns)
