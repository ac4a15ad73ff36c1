"""Integrated-gradients contributions of the MRP networks (``evaluation.contributions``): what the
attributions say for networks whose output is known to depend on one input only, completeness
against a baseline built independently, and ``python -m evaluation contributions`` on a tiny
prepared cohort with checkpoints laid out as the evaluation runner lays them out."""

from __future__ import annotations

import copy
import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from evaluation import benchmark
from evaluation import __main__ as cli
from evaluation.contributions import bundle_scripts, integrated_gradients, modalities, shares
from evaluation.cv import Predictions

# age (clinical), a Table 1 field the MRP models do not use, three Table 2 variables and one
# variable Table 2 does not name
FIELDS = [
    {"name": "age", "group": "clinical", "type": "number"},
    {"name": "race", "group": "clinical", "type": "category", "levels": ["Asian", "White"]},
    {"name": "focality", "group": "rhpc", "type": "category", "levels": ["unifocal", "multifocal", "unknown"]},
    {"name": "molecular_subtype", "group": "rhpc", "type": "category",
     "levels": ["luminal A", "triple negative", "unknown"]},
    {"name": "cT", "group": "rhpc", "type": "category", "levels": ["T1", "T2", "T3", "unknown"]},
    {"name": "scanner_note", "group": "rhpc", "type": "category", "levels": ["a", "b"]},
]
LEVELS = [3, 3, 4, 2]
VARIABLES = ["focality", "molecular_subtype", "cT", "scanner_note"]
E = 4  # embed_dim
TINY = {"widen_factor": 0.0625, "embed_dim": E}
STEPS = 16


@pytest.fixture(scope="module")
def s():
    return bundle_scripts()


def _rhpc(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in LEVELS], dim=1)
    return index, 40 + 20 * torch.rand(batch, 1, generator=g)


def _only(net, keep: int | None):
    """Zero the rhpc extractor's first MLP weights on every embedded input but number ``keep``
    (0..3 the variables, 4 age; None: all of them): then only that input can move the output."""
    weight = net.extractor.mlp[0].weight if hasattr(net, "extractor") else net.rhpc.mlp[0].weight
    with torch.no_grad():
        for k in range(len(LEVELS) + 1):
            if k != keep:
                weight[:, k * E:(k + 1) * E] = 0
    return net


def _imr_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, 1, 16, 16, 16, generator=g)
    mask = torch.ones(batch, 3)
    mask[1, 2] = 0  # the second patient lacks the third visit: zeros there, as the bundle loads it
    image[1, 2] = 0
    index, age = _rhpc(batch, seed)
    return {"image": image, "visit_mask": mask, "phase": torch.tensor([[0, 1, 2]] * batch), "rhpc_index": index,
            "age": age}


@pytest.mark.parametrize("keep", [2, 4], ids=["cT", "age"])
def test_one_rhpc_input_driving_the_rhpc_model_gets_the_whole_share(s, keep):
    torch.manual_seed(0)
    net = _only(s.networks.RhpcNet(FIELDS, embed_dim=E, age_stats=(50.0, 10.0)), keep).eval()
    index, age = _rhpc(6)
    attributions = integrated_gradients(net, "rhpc", {"rhpc_index": index, "age": age}, STEPS)
    assert attributions.image is None and attributions.variables.shape == (6, 4)
    share, signed = shares(attributions.items())  # columns: the four variables, then age
    assert np.allclose(share[:, keep], 1.0) and np.allclose(np.delete(share, keep, axis=1), 0.0)
    assert np.allclose(np.abs(signed), share)
    with torch.no_grad():  # the rhpc model is a smooth function of the embeddings: completeness is tight
        assert attributions.delta.abs().max() < 1e-4


@pytest.mark.parametrize("drives", ["image", "rhpc"])
def test_image_or_rhpc_alone_driving_imrrhpc_gets_the_modality_share(s, drives):
    torch.manual_seed(0)
    net = s.networks.IMRrhpc(FIELDS, **TINY, age_stats=(50.0, 10.0)).eval()
    with torch.no_grad():  # the response head on [image feature, rhpc feature]: cut one of them off
        cut = slice(net.encoder.dim, None) if drives == "image" else slice(0, net.encoder.dim)
        net.head.weight[:, cut] = 0
    attributions = integrated_gradients(net, "imr", _imr_inputs(), STEPS)
    share, _ = shares(modalities(attributions))  # columns: MRI, rhpc
    item_share, _ = shares(attributions.items())  # MRI, the variables, age
    if drives == "image":
        assert np.allclose(share[:, 0], 1.0) and np.allclose(item_share[:, 0], 1.0)
        assert torch.equal(attributions.variables, torch.zeros_like(attributions.variables))
    else:
        assert np.allclose(share[:, 0], 0.0) and np.allclose(item_share[:, 1:].sum(1), 1.0)
        assert torch.equal(attributions.image, torch.zeros_like(attributions.image))


def _baseline_network(net):
    """The same network with its categorical embedding and age layer giving exactly zero: with a
    zero image, f(baseline) computed without the attribution code's hooks."""
    zero = copy.deepcopy(net)
    extractor = zero.extractor if hasattr(zero, "extractor") else zero.rhpc
    with torch.no_grad():
        extractor.categorical.weight.zero_()
        extractor.age.weight.zero_()
        extractor.age.bias.zero_()
    return zero


@pytest.mark.parametrize("model", ["imr", "img", "rhpc"])
def test_attributions_add_up_to_the_logit_difference_from_the_baseline(s, model):
    torch.manual_seed(1)
    net = s.networks.mrp_network(model, FIELDS, **TINY, age_stats=(50.0, 10.0)).eval()
    if model == "imr":
        inputs = _imr_inputs()
    elif model == "img":
        index, age = _rhpc(2)
        inputs = {"image": torch.rand(2, 4, 1, 32, 16), "view_mask": torch.tensor([[1.0, 1, 1, 1], [1, 0, 1, 0]]),
                  "rhpc_index": index, "age": age}
    else:
        index, age = _rhpc(2)
        inputs = {"rhpc_index": index, "age": age}
    names = s.engine.INPUTS[model]
    args = [inputs[n] for n in names]
    with torch.no_grad():
        f_x = net(*args)[:, 0]
        baseline_args = ([torch.zeros_like(args[0])] if model != "rhpc" else []) + args[1 if model != "rhpc" else 0:]
        f_b = _baseline_network(net)(*baseline_args)[:, 0]
    attributions = integrated_gradients(net, model, inputs, steps=64)
    total = attributions.items().sum(1)
    assert float((f_x - f_b).abs().min()) > 1e-3  # a difference to explain
    assert torch.allclose(total, f_x - f_b, rtol=0.02, atol=1e-3), (total, f_x - f_b)
    assert torch.allclose(attributions.delta, total - (f_x - f_b), atol=1e-4)  # captum's delta is that gap


# --- the command on a tiny prepared cohort with checkpoints as the runner lays them out ---

PATIENTS = 9  # folds 0, 1, 2; P6-P8 are the test fold 2 of split test2_val1; P8 has no mammogram


def _save_nifti(array: np.ndarray, path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("contributions_cohort")
    rng = np.random.default_rng(0)
    entries = []
    for k in range(PATIENTS):
        pid = f"P{k}"
        entry = {"id": pid, "site": "S1", "label": k % 2, "fold": k // 3, "ftv_ml": {"T0": 5.0, "T1": 3.0},
                 "clinical": {"age": 40 + k, "race": "Asian", "focality": ["unifocal", "multifocal", "unknown"][k % 3],
                              "molecular_subtype": ["luminal A", "triple negative"][k % 2],
                              "cT": ["T1", "T2", "T3", "unknown"][k % 4], "scanner_note": "ab"[k % 2]}}
        for visit in ("T0", "T1"):
            entry[visit] = _save_nifti(100 * rng.random((16, 16, 16, 2)), root / "images" / pid / f"{visit}.nii.gz")
            entry[visit] = entry[visit][len(str(root)) + 1:]
        if pid != "P8":
            entry["mammograms"] = {v: _save_nifti(rng.random((32, 16)), root / "images" / pid / f"mg_{v}.nii.gz")[
                len(str(root)) + 1:] for v in ("L_CC", "L_MLO", "R_CC", "R_MLO")}
        entries.append(entry)
    datalist = {"channels": ["pe_early", "subtraction"], "visits": ["T0", "T1"], "clinical_fields": FIELDS,
                "num_folds": 3, "training": entries}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root


def _digest(cohort) -> str:
    return hashlib.sha256((cohort / "datalist.json").read_bytes()).hexdigest()[:16]


def _save_model(out, key: str, split: str, net, model: str, cohort_digest: str | None) -> None:
    run_dir = out / "models" / f"mrp_fusion.{key}" / split
    (run_dir / "models").mkdir(parents=True)
    settings = {"model": model, **TINY, "time_embedding": True, "knowledge_predictor": True, "visits": ["T0", "T1"],
                "visit_phases": {"T0": "pre", "T1": "mid"}, "channel": "subtraction", "spatial_size": None,
                "mg_size": None, "clinical_fields": FIELDS}
    torch.save({"model": net.state_dict(), "settings": settings}, run_dir / "models" / f"model_{model}.pt")
    if cohort_digest is not None:  # a finished training
        (run_dir / "trained.json").write_text(json.dumps({"cohort": cohort_digest, "model": model}))


@pytest.fixture(scope="module")
def evaluated(cohort, tmp_path_factory):
    """An evaluation output folder: the rhpc model driven by cT alone (two inner models of test
    fold 2), iMGrhpc by its image alone, a plain iMRrhpc, an unfinished ablation; then the command."""
    s = bundle_scripts()
    out = tmp_path_factory.mktemp("evaluated")
    torch.manual_seed(0)
    rhpc = _only(s.networks.RhpcNet(FIELDS, embed_dim=E, age_stats=(45.0, 3.0)), keep=2)
    for split in ("test2_val1", "test2_val0"):
        _save_model(out, "rhpc", split, rhpc, "rhpc", _digest(cohort))
    img = s.networks.IMGrhpc(FIELDS, **TINY, age_stats=(45.0, 3.0))
    with torch.no_grad():
        img.head.weight[:, img.encoder.dim:] = 0
    _save_model(out, "img", "test2_val1", img, "img", _digest(cohort))
    _save_model(out, "imr", "test2_val1", s.networks.IMRrhpc(FIELDS, **TINY, age_stats=(45.0, 3.0)), "imr",
                _digest(cohort))
    _save_model(out, "imr+no_knowledge", "test2_val1", s.networks.IMRrhpc(FIELDS, **TINY), "imr", None)
    assert cli.main(["contributions", "--data", str(cohort), "--out", str(out), "--steps", str(STEPS)]) == 0
    return out, pd.read_csv(out / "report" / "contributions.csv")


def test_command_writes_the_table_and_figure_of_every_finished_network(evaluated):
    out, table = evaluated
    assert list(table.columns) == ["network", "item", "kind", "group", "mean", "std", "patients", "signed_mean"]
    assert list(dict.fromkeys(table.network)) == ["rhpc", "img", "imr"]  # the unfinished ablation is left out
    for suffix in ("png", "svg"):
        assert (out / "report" / "figures" / f"contributions.{suffix}").stat().st_size > 0
    assert not list(out.rglob(".tmp-*"))
    for name, frame in table.groupby("network"):
        for kind in ("modality", "variable"):  # each level's mean shares add up to 1
            assert frame[frame.kind == kind]["mean"].sum() == pytest.approx(1.0)
    items = {(r.network, r.kind): set() for r in table.itertuples()}
    for r in table.itertuples():
        items[(r.network, r.kind)].add(r.item)
    assert items[("imr", "modality")] == {"MRI", "rhpc"} and items[("rhpc", "modality")] == {"rhpc"}
    assert items[("img", "variable")] == {"mammogram", "age", *VARIABLES}


def test_test_fold_patients_only_each_counted_once(evaluated):
    _, table = evaluated
    patients = table.groupby("network")["patients"].unique()
    assert patients["rhpc"].tolist() == [3]  # fold 2 (P6-P8), tested by two inner models, counted once
    assert patients["imr"].tolist() == [3]
    assert patients["img"].tolist() == [2]  # P8 has no mammogram


def test_the_driving_inputs_get_the_contribution(evaluated):
    _, table = evaluated
    row = table.set_index(["network", "kind", "item"])
    assert row.loc[("rhpc", "variable", "cT"), "mean"] == pytest.approx(1.0)
    assert row.loc[("rhpc", "variable", "cT"), "std"] == pytest.approx(0.0, abs=1e-9)
    assert row.loc[("rhpc", "variable", "focality"), "mean"] == pytest.approx(0.0, abs=1e-9)
    assert row.loc[("img", "modality", "mammogram"), "mean"] == pytest.approx(1.0)
    assert row.loc[("img", "modality", "rhpc"), "mean"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < row.loc[("imr", "modality", "MRI"), "mean"] < 1  # an untouched network uses both


def test_groups_follow_table_2_of_the_paper(evaluated):
    _, table = evaluated
    group = table[table.network == "imr"].set_index("item")["group"].to_dict()
    assert group == {"MRI": "radiological", "rhpc": "rhpc", "focality": "radiological",
                     "molecular_subtype": "histopathological", "cT": "clinical", "age": "personal",
                     "scanner_note": "rhpc"}  # a field Table 2 does not name keeps the cohort's group


def test_no_model_or_another_cohort_is_a_one_line_error(cohort, tmp_path, capsys):
    assert cli.main(["contributions", "--data", str(cohort), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no trained MRP network under") and "\n" not in err
    s = bundle_scripts()
    _save_model(tmp_path, "rhpc", "test2_val1", s.networks.RhpcNet(FIELDS, embed_dim=E), "rhpc", "0" * 16)
    assert cli.main(["contributions", "--data", str(cohort), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained on another cohort" in err and "\n" not in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("method,written", [("mrp_rhpc", True), ("lr_clinical", False)])
def test_benchmark_adds_the_contributions_when_it_ran_mrp_methods(cohort, tmp_path, monkeypatch, method, written):
    s = bundle_scripts()
    _save_model(tmp_path, "rhpc", "test2_val1", s.networks.RhpcNet(FIELDS, embed_dim=E), "rhpc", _digest(cohort))
    _save_model(tmp_path, "rhpc+ablation", "test2_val1", s.networks.RhpcNet(FIELDS, embed_dim=E), "rhpc",
                _digest(cohort))
    monkeypatch.setattr(benchmark, "run_benchmark", lambda *args: (Predictions({}, {}), {}))
    monkeypatch.setattr(cli, "_report", lambda *args: None)
    assert cli.main(["benchmark", "--data", str(cohort), "--out", str(tmp_path), "--profile", "cpu",
                     "--method", method]) == 0
    assert (tmp_path / "report" / "contributions.csv").is_file() == written
    if written:  # the benchmark attributes the main networks only, not the ablations
        assert set(pd.read_csv(tmp_path / "report" / "contributions.csv").network) == {"rhpc"}
