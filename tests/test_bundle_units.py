"""Networks, losses, clinical encoding and the teacher-leakage guard of the two pCR bundles."""

from __future__ import annotations

import ast
import filecmp
import json

import numpy as np
import pytest
import torch

from bundle_utils import BUNDLES, SHARED_SCRIPTS, bundle_scripts, merged_config
from monai.bundle import ConfigParser

from preprocessing.schema import preset

FIELDS = preset("synthetic").field_record()  # Table 1 of Jing & Wang, as the synthetic cohort records it
RECORD = {
    "agents": ["Paclitaxel", "Trastuzumab"], "age": 41, "race": "Asian", "ethnicity": "Hispanic or Latino",
    "BluePrint": "HER2", "HR": 0, "HER2": 1, "MammaPrint": 1, "DRD": 0, "immune": 1,
}


def test_shared_scripts_identical_in_both_bundles():
    for name in SHARED_SCRIPTS:
        assert filecmp.cmp(BUNDLES / "pcr_teacher/scripts" / name, BUNDLES / "pcr_dualtask/scripts" / name,
                           shallow=False), f"scripts/{name} differs between the bundles"


@pytest.mark.parametrize("bundle", ["pcr_teacher", "pcr_dualtask"])
def test_bundle_scripts_import_no_project_package(bundle):
    for path in (BUNDLES / bundle / "scripts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not any(n.split(".")[0] in ("preprocessing", "evaluation", "fl_jobs") for n in names), path


def test_clinical_encoding_follows_table_1():
    with bundle_scripts("pcr_teacher") as s:
        encoding = s.data.ClinicalEncoding(FIELDS)
        vector = encoding.encode("P1", RECORD)
    assert (encoding.clinical_size, encoding.subtype_size, encoding.age_index) == (20, 8, 12)
    assert vector.shape == (28,) and vector.dtype == np.float32
    assert vector[:12].tolist() == [0] * 7 + [1, 0, 0, 0, 1]  # multi-hot: paclitaxel, trastuzumab
    assert vector[12] == 41  # raw age: z-scored inside the network
    assert vector[13:18].tolist() == [0, 1, 0, 0, 0] and vector[18:20].tolist() == [1, 0]
    assert vector[20:25].tolist() == [1, 0, 0, 1, 0]  # HR, HER2, MP, DRD, immune: positive 0, negative 1
    assert vector[25:28].tolist() == [0, 1, 0]


@pytest.mark.parametrize("field,value,message", [
    ("race", "Martian", "patient P1: clinical field 'race' has unknown value 'Martian'"),
    ("HER2", 2, "patient P1: clinical field 'HER2' must be 0 or 1"),
    ("age", None, "patient P1: clinical field 'age' is missing"),
])
def test_clinical_encoding_rejects_bad_values(field, value, message):
    with bundle_scripts("pcr_teacher") as s, pytest.raises(ValueError, match=message):
        s.data.ClinicalEncoding(FIELDS).encode("P1", {**RECORD, field: value})


def test_age_is_z_scored_with_the_statistics_the_network_was_built_with():
    with bundle_scripts("pcr_teacher") as s:
        items = [{"clinical": s.data.ClinicalEncoding(FIELDS).encode("P", {**RECORD, "age": a})} for a in (30, 40, 50)]
        mean, std = s.data.age_statistics(items, FIELDS)
        assert (mean, std) == pytest.approx((40.0, np.std([30, 40, 50])))
        clinical_input = s.layers.ClinicalInput(FIELDS, age_stats=(mean, std))
        batch = torch.as_tensor(np.stack([i["clinical"] for i in items]))
        ages = clinical_input(batch, 3, torch.device("cpu"))[0][:, 12]
        assert ages.tolist() == pytest.approx(((np.array([30, 40, 50]) - mean) / std).tolist(), abs=1e-6)
        # the statistics are buffers: saved with the model and restored into a default-built one
        trained = s.networks.PCRTeacher(FIELDS, widen_factor=0.0625, age_stats=(mean, std))
        restored = s.networks.PCRTeacher(FIELDS, widen_factor=0.0625)
        restored.load_state_dict(trained.state_dict())
        assert float(restored.clinical.age_mean) == pytest.approx(mean)
        assert float(restored.clinical.age_std) == pytest.approx(std)


def test_class_balanced_weights():
    with bundle_scripts("pcr_teacher") as s:
        items = [{"label": np.float32([y])} for y in (0, 0, 0, 1)]
        assert s.data.class_balanced_weights(items) == pytest.approx([1 / 3] * 3 + [1.0])
        with pytest.raises(ValueError, match="all of one class"):
            s.data.class_balanced_weights(items[:3])


@pytest.mark.parametrize("bundle", ["pcr_teacher", "pcr_dualtask"])
def test_augmentation_stays_in_the_axial_plane_and_hits_every_visit_alike(bundle):
    """A bar in one axial slice (RAS: slices along the last axis) stays in that slice under the
    bundle's own flip and rotation, is moved by them, and every visit moves the same way."""
    from monai.transforms import Compose

    parser = merged_config(bundle)
    parser["noise_std"] = 0.0  # geometry only: noise would touch every voxel
    with bundle_scripts(bundle):
        augment = Compose(parser.get_parsed_content("augmentation", instantiate=True))
    visits, size, z = len(parser["visits"]), 24, 9
    image = torch.zeros(parser["channels"] * visits, size, size, size)
    image[:, 4:12, 11:13, z] = 1.0  # a bar along the first (left-right) axis, off centre
    moved = 0
    for seed in range(6):
        augment.set_random_state(seed=seed)
        out = torch.as_tensor(augment({"image": image.clone()})["image"])
        outside = out.abs().sum() - out[..., z].abs().sum()
        assert outside < 1e-4 * out.abs().sum(), "augmentation moved the bar out of its axial slice"
        assert all(torch.equal(out[c], out[0]) for c in range(1, out.shape[0])), "visits augmented differently"
        moved += not torch.allclose(out, image, atol=1e-3)
    assert moved >= 5


TEACHER_VARIANTS = [(), ("t0_t1",), ("no_clinical",), ("no_subtype",), ("no_clinical_subtype",)]
DUALTASK_VARIANTS = [(), ("t0_only",), ("t1_only",), ("no_clinical",), ("no_subtype",), ("no_clinical_subtype",)]


def _network(s, parser, cls):
    args = {k: parser[k] for k in ("channels", "widen_factor", "use_clinical", "use_subtype")}
    args["channels_per_visit"] = args.pop("channels")
    args["widen_factor"] = 0.0625
    return cls(FIELDS, **args)


@pytest.mark.parametrize("overrides", TEACHER_VARIANTS)
def test_teacher_output_shape_for_every_variant(overrides):
    parser = merged_config("pcr_teacher", *overrides)
    with bundle_scripts("pcr_teacher") as s:
        net = _network(s, parser, s.networks.PCRTeacher).eval()
        visits = len(parser["visits"])
        image, clinical = torch.rand(2, 3 * visits, 16, 16, 16), torch.rand(2, 28)
        assert net(image, clinical).shape == (2, 1)
        assert net(image).shape == (2, 1)  # clinical input is optional
        expected = 32 + 20 * parser["use_clinical"] + 8 * parser["use_subtype"]
        assert net.head.in_features == expected
        # T0-T2 model tested on T0-T1 (Conventional #2): the LSTM takes any number of visits
        assert net(image[:, :6], clinical).shape == (2, 1)


@pytest.mark.parametrize("overrides", DUALTASK_VARIANTS)
def test_dualtask_output_shape_for_every_variant(overrides):
    parser = merged_config("pcr_dualtask", *overrides)
    with bundle_scripts("pcr_dualtask") as s:
        net = _network(s, parser, s.networks.DualTaskNet).eval()
        visits = len(parser["visits"])
        assert "T2" not in parser["visits"]
        out = net(torch.rand(2, 3 * visits, 16, 16, 16), torch.rand(2, 28))
        assert out.shape == (2, 1 + 32)
        assert (out[:, 1:] >= 0).all()  # ReLU RNN, like the teacher's ReLU/avg-pooled representation
        assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
        assert net.head.in_features == 32 + 20 * parser["use_clinical"] + 8 * parser["use_subtype"]


def test_dualtask_loss_is_bce_plus_weighted_mse():
    with bundle_scripts("pcr_dualtask") as s:
        torch.manual_seed(0)
        pred, target = torch.randn(4, 9), torch.rand(4, 9)
        target[:, 0] = torch.tensor([0.0, 1.0, 1.0, 0.0])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(pred[:, 0], target[:, 0])
        mse = ((pred[:, 1:] - target[:, 1:]) ** 2).mean()
        for weight in (0.0, 1.0, 2.5):
            assert s.dual_task.DualTaskLoss(weight)(pred, target).item() == pytest.approx((bce + weight * mse).item(), rel=1e-6)
        with pytest.raises(ValueError, match="teacher representation size"):
            s.dual_task.DualTaskLoss()(pred, target[:, :5])


def test_prepare_batch_builds_label_plus_teacher_target():
    with bundle_scripts("pcr_dualtask") as s:
        batch = {"image": torch.rand(2, 6, 4, 4, 4), "label": torch.tensor([[1.0], [0.0]]),
                 "clinical": torch.rand(2, 28), "teacher": torch.rand(2, 5)}
        image, target, args, kwargs = s.dual_task.PrepareBatchDualTask()(batch)
        assert target.shape == (2, 6) and torch.equal(target[:, 0], batch["label"][:, 0])
        assert torch.equal(target[:, 1:], batch["teacher"]) and torch.equal(args[0], batch["clinical"])


def _features(tmp_path, entries, s, values=(0.5, 1.5), **sidecar):
    path = tmp_path / "features.csv"
    rows = [{"id": e["id"], **{f"f{i}": v for i, v in enumerate(values)}} for e in entries]
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    meta = {"fold_digest": s.data.fold_digest(entries), "train_folds": [0], "val_fold": 1, "test_fold": 2}
    meta.update(sidecar)
    (tmp_path / "features.csv.json").write_text(json.dumps(meta))
    return str(path)


def test_teacher_targets_attached_to_training_patients(tmp_path, fake_prepared):
    with bundle_scripts("pcr_dualtask") as s:
        entries = s.data.load_datalist(str(fake_prepared))
        items = s.data.select(entries, ["T0", "T1"], [0], FIELDS)
        path = _features(tmp_path, [e for e in entries if e["fold"] in (0, 1)], s)
        with pytest.raises(ValueError, match="different cohort"):
            s.dual_task.attach_teacher_targets(items, path, entries, 1, 2)
        path = _features(tmp_path, entries, s)
        targets = s.dual_task.attach_teacher_targets(items, path, entries, 1, 2)
        rms = np.sqrt((0.5**2 + 1.5**2) / 2)  # one scale: the root mean square over the training patients
        assert [t["teacher"].tolist() for t in targets] == [pytest.approx([0.5 / rms, 1.5 / rms])] * len(items)
        given = s.dual_task.attach_teacher_targets(items, path, entries, 1, 2, scale=2.0)  # a pooled scale
        assert [t["teacher"].tolist() for t in given] == [pytest.approx([0.25, 0.75])] * len(items)


@pytest.mark.parametrize("sidecar,message", [
    ({"train_folds": [0, 2]}, "trained or validated on fold 2, this run's test fold"),
    ({"val_fold": 2}, "trained or validated on fold 2, this run's test fold"),
    ({"train_folds": [0, 1], "val_fold": 2}, "this run's test fold"),
    ({"train_folds": [0, 1], "val_fold": 0}, "trained on fold 1, this run's validation fold"),
])
def test_teacher_that_saw_held_out_patients_is_refused(tmp_path, fake_prepared, sidecar, message):
    with bundle_scripts("pcr_dualtask") as s:
        entries = s.data.load_datalist(str(fake_prepared))
        path = _features(tmp_path, entries, s, **sidecar)
        with pytest.raises(ValueError, match=message):
            s.dual_task.attach_teacher_targets(s.data.select(entries, ["T0", "T1"], [0], FIELDS), path, entries, 1, 2)


def test_missing_teacher_representation_names_the_patient(tmp_path, fake_prepared):
    with bundle_scripts("pcr_dualtask") as s:
        entries = s.data.load_datalist(str(fake_prepared))
        path = _features(tmp_path, entries, s)
        table = (tmp_path / "features.csv").read_text().splitlines()
        (tmp_path / "features.csv").write_text("\n".join(table[:2]) + "\n")  # keep only the first patient
        with pytest.raises(ValueError, match="patient FAKE001: no teacher representation"):
            s.dual_task.attach_teacher_targets(s.data.select(entries, ["T0", "T1"], [0], FIELDS), path, entries, 1, 2)


def test_select_reports_missing_visit_and_empty_folds(fake_prepared):
    with bundle_scripts("pcr_teacher") as s:
        entries = s.data.load_datalist(str(fake_prepared))
        broken = [dict(e, T1=None) if e["id"] == "FAKE003" else e for e in entries]
        with pytest.raises(ValueError, match="patient FAKE003: no image for visit"):
            s.data.select(broken, ["T0", "T1"], [0], FIELDS)
        with pytest.raises(ValueError, match=r"no patient in fold\(s\) \[7\]"):
            s.data.select(entries, ["T0"], [7], FIELDS)
        with pytest.raises(FileNotFoundError, match="datalist.json: not found"):
            s.data.load_datalist(str(fake_prepared / "images"))


def test_checkpoint_settings_are_read_back_and_foreign_checkpoints_refused(tmp_path, fake_prepared):
    with bundle_scripts("pcr_teacher") as s:
        settings = s.checkpoint.ModelSettings(widen_factor=0.125, visits=["T0", "T1"], clinical_fields=FIELDS).state_dict()
        torch.save({"model": {}, "settings": settings}, tmp_path / "ok.pt")
        saved = s.checkpoint.saved_settings(str(tmp_path / "ok.pt"))
        assert saved["widen_factor"] == 0.125
        assert s.data.matching_fields(saved["clinical_fields"], str(fake_prepared)) == FIELDS
        torch.save({"w": torch.zeros(1)}, tmp_path / "bare.pt")
        with pytest.raises(ValueError, match="bare.pt: checkpoint has no saved settings"):
            s.checkpoint.saved_settings(str(tmp_path / "bare.pt"))
        torch.save({"model": {}, "settings": dict(settings, clinical_fields=None)}, tmp_path / "old.pt")
        with pytest.raises(ValueError, match="old.pt: checkpoint has no clinical encoding"):
            s.checkpoint.saved_settings(str(tmp_path / "old.pt"))
        with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
            s.checkpoint.saved_settings(str(tmp_path / "missing.pt"))


def test_a_model_is_refused_on_a_cohort_with_another_encoding(fake_prepared):
    """A model trained on the synthetic fields (with DRD, immune, BluePrint) does not read a cohort
    prepared with the ispy2 schema, whose vector lacks them, and the reverse."""
    ispy2 = preset("ispy2").field_record()
    with bundle_scripts("pcr_teacher") as s:
        with pytest.raises(ValueError, match=r"clinical encoding does not match the cohort.*: BluePrint, DRD, immune\)"):
            s.data.matching_fields(ispy2, str(fake_prepared))
        # rhpc fields (the cohort's synthetic ones, none in the model) are not the bundle's concern
        assert s.data.matching_fields([f for f in FIELDS if f["group"] != "rhpc"], str(fake_prepared))
        race = next(f for f in FIELDS if f["name"] == "race")
        other_levels = [dict(f, levels=race["levels"] + ["unknown"]) if f is race else f for f in FIELDS]
        with pytest.raises(ValueError, match="levels differ: race"):
            s.data.matching_fields(other_levels, str(fake_prepared))
        encoding = s.data.ClinicalEncoding(ispy2)
        assert (encoding.clinical_size, encoding.subtype_size) == (12 + 1 + 7 + 3, 3)
        # fields of the MRP model's rhpc group are not part of the pCR bundles' vector
        rhpc = {"name": "histology", "group": "rhpc", "type": "category", "levels": ["ductal", "lobular"]}
        assert s.data.ClinicalEncoding(FIELDS + [rhpc]).encode("P1", RECORD).shape == (28,)


def test_area_resampling_keeps_the_tumour_volume(tmp_path):
    import nibabel as nib

    volume = np.zeros((16, 16, 16, 4), np.float32)
    volume[3:8, 4:9, 5:11, 2] = 1.0  # 150 voxels of 2 mm: an odd-sized tumour, not aligned with the 2x grid
    volume[..., 0] = 150.0
    nib.save(nib.Nifti1Image(volume, np.diag([-2.0, -2.0, 2.0, 1.0])), tmp_path / "T0.nii.gz")
    with bundle_scripts("pcr_teacher") as s:
        from monai.transforms import Compose

        image = Compose(s.data.visit_transforms(["T0"], 3, [8, 8, 8]))({"T0": str(tmp_path / "T0.nii.gz")})["image"]
    assert tuple(image.shape) == (3, 8, 8, 8)
    assert float(image[2].sum()) * 8 == pytest.approx(150.0)  # 4 mm voxels hold 8 of the 2 mm ones
    assert float(image[2].max()) <= 1.0 and float(image[0].mean()) == pytest.approx(1.5)  # PE / 100


@pytest.mark.parametrize("bundle,configs", [("pcr_teacher", ("train", "profile_cpu", "evaluate")),
                                            ("pcr_dualtask", ("train", "profile_cpu", "evaluate")),
                                            ("pcr_dualtask", ("train", "evaluate", "profile_cpu")),
                                            ("pcr_teacher", ("inference", "profile_cpu")),
                                            ("pcr_dualtask", ("inference", "profile_cpu"))])
def test_evaluation_and_inference_take_input_size_and_widths_from_the_checkpoint(bundle, configs, tmp_path,
                                                                                 fake_prepared):
    """A checkpoint trained at 8^3 with widths x0.0625 is read at 8^3 and built at those widths,
    whatever the profile given after it says (16^3, x0.125)."""
    visits = ["T0", "T1", "T2"] if bundle == "pcr_teacher" else ["T0", "T1"]
    with bundle_scripts(bundle) as s:
        settings = s.checkpoint.ModelSettings(widen_factor=0.0625, channels=3, spatial_size=[8, 8, 8], visits=visits,
                                              lstm_layers=2, rnn_layers=2, use_clinical=True, use_subtype=True,
                                              clinical_fields=FIELDS)
        torch.save({"model": {}, "settings": settings.state_dict()}, tmp_path / "model.pt")
        parser = merged_config(bundle, *configs[1:]) if configs[0] == "train" else ConfigParser()
        if configs[0] != "train":
            parser.read_config([str(BUNDLES / bundle / "configs" / f"{n}.json") for n in configs])
        parser.update({"bundle_root": str(BUNDLES / bundle), "ckpt_dir": str(tmp_path),
                       "dataset_dir": str(fake_prepared)})
        preprocessing = parser.get_parsed_content("validate#preprocessing" if configs[0] == "train" else "preprocessing")
        entry = s.data.select(s.data.load_datalist(str(fake_prepared)), visits, [0], FIELDS)[0]
        assert tuple(preprocessing(entry)["image"].shape) == (3 * len(visits), 8, 8, 8)
        assert parser.get_parsed_content("network_def").encoder.dim == 32  # 512 x 0.0625


def test_validation_loss_weighs_the_classes_as_the_sampler_trains_them():
    """pos_weight = non-pCR / pCR of the training folds: a constant prediction scores the same
    validation loss whatever the class mix, as it would on the balanced batches of training."""
    with bundle_scripts("pcr_teacher") as s:
        entries = [{"fold": 0, "label": y} for y in (1, 0, 0, 0)] + [{"fold": 1, "label": 1}]
        weight = s.data.positive_class_weight(entries, [0])
        assert weight.tolist() == [3.0]
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        logits, labels = torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [0.0], [0.0]])
        # one positive weighted x3 against three negatives: both classes count alike
        assert float(loss(logits, labels)) == pytest.approx(6 * np.log(2) / 4)
        with pytest.raises(ValueError, match="one class only"):
            s.data.positive_class_weight(entries, [1])
        parser = merged_config("pcr_teacher")
        assert parser["validate#key_metric#val_loss#loss_fn#pos_weight#_target_"] == "scripts.data.positive_class_weight"


@pytest.mark.parametrize("bundle,cls", [("pcr_teacher", "PCRTeacher"), ("pcr_dualtask", "DualTaskNet")])
def test_the_head_learns_faster_under_the_cpu_profile_only(bundle, cls):
    """The bundle's optimiser puts the final linear layer at head_lr_factor x the learning rate
    (10 in the CPU profile, 1 in the paper's settings) and every other weight at the learning rate."""
    for overrides, factor in (((), 1.0), (("profile_cpu",), 10.0)):
        parser = merged_config(bundle, *overrides)
        assert parser["head_lr_factor"] == factor
        with bundle_scripts(bundle) as s:
            net = _network(s, parser, getattr(s.networks, cls))
            groups = s.layers.parameter_groups(net, parser["learning_rate"], parser["head_lr_factor"])
            optimizer = torch.optim.AdamW(groups, lr=parser["learning_rate"])
        head = {id(p) for p in net.head.parameters()}
        grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
        assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # every weight exactly once
        rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
        assert all(rates[i] == pytest.approx(parser["learning_rate"] * (factor if i in head else 1.0)) for i in rates)
        # the config's own optimizer is built the same way
        assert parser["optimizer"]["params"]["_target_"] == "scripts.layers.parameter_groups"


@pytest.mark.parametrize("bundle", ["pcr_teacher", "pcr_dualtask"])
@pytest.mark.parametrize("profile,momentum", [((), None), (("profile_cpu",), 0.05)])
def test_validation_and_checkpoint_use_the_moving_average_of_the_weights(bundle, profile, momentum, tmp_path,
                                                                         fake_prepared):
    """One optimiser step (6 training patients, batch 16): the validator scores, and the checkpoint
    keeps, (1 - momentum) x the initial weights + momentum x the trained ones under the CPU profile
    (0.05), the trained weights themselves in the paper's settings (no average)."""
    parser = merged_config(bundle, *profile)
    assert parser["ema_momentum"] == momentum
    parser.update({"bundle_root": str(BUNDLES / bundle), "dataset_dir": str(fake_prepared), "epochs": 1,
                   "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"),
                   "val_fold": 1, "test_fold": 2, "widen_factor": 0.0625})
    with bundle_scripts(bundle) as s:
        if bundle == "pcr_dualtask":  # stage-2 targets: a teacher representation of the network's width
            entries = s.data.load_datalist(str(fake_prepared))
            parser["teacher_features"] = _features(tmp_path, entries, s, values=[1.0] * 32)
        trainer = parser.get_parsed_content("train#trainer")
        initial = {k: v.clone() for k, v in parser.get_parsed_content("network").state_dict().items()}
        trainer.run()
        assert trainer.state.iteration == 1
        trained = parser.get_parsed_content("network").state_dict()
        validated = parser.get_parsed_content("validate#evaluator").network
        ema = parser.get_parsed_content("ema")
        assert validated is (parser.get_parsed_content("network") if momentum is None else ema.ema_model)
    saved = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)["model"]
    name = "head.weight"
    assert not torch.allclose(trained[name], initial[name])
    expected = trained[name] if momentum is None else (1 - momentum) * initial[name] + momentum * trained[name]
    assert torch.allclose(saved[name], expected, atol=1e-6)
