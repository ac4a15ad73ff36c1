"""Networks, rhpc encoding, knowledge loss and ensemble of the MRP fusion bundle (Gao et al.)."""

from __future__ import annotations

import ast
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bundle_utils import BUNDLES, bundle_scripts
from preprocessing.schema import preset

# age (clinical), a Table 1 field the MRP models do not use, and three rhpc variables
FIELDS = [
    {"name": "age", "group": "clinical", "type": "number"},
    {"name": "race", "group": "clinical", "type": "category", "levels": ["Asian", "White"]},
    {"name": "focality", "group": "rhpc", "type": "category", "levels": ["unifocal", "multifocal", "unknown"]},
    {"name": "cT", "group": "rhpc", "type": "category", "levels": ["T1", "T2", "T3", "unknown"]},
    {"name": "laterality", "group": "rhpc", "type": "category", "levels": ["left", "right"]},
]
TINY = {"widen_factor": 0.0625, "embed_dim": 8}  # ResNet18 widths 4-32


@pytest.fixture(scope="module")
def s():
    with bundle_scripts("mrp_fusion") as scripts:
        yield scripts


def _rhpc(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randint(0, n, (batch,), generator=g) for n in (3, 4, 2)], dim=1)
    return index, 40 + 10 * torch.rand(batch, 1, generator=g)


def _mri(batch, visits=3, seed=0):
    return torch.randn(batch, visits, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def _mg(batch, seed=0):
    return torch.randn(batch, 4, 1, 32, 16, generator=torch.Generator().manual_seed(seed))


def test_bundle_scripts_import_only_the_standard_library_torch_monai_ignite_numpy():
    allowed = set(sys.stdlib_module_names) | {"__future__", "torch", "monai", "ignite", "numpy"}
    for path in (BUNDLES / "mrp_fusion" / "scripts").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_rhpc_encoding(s):
    encoding = s.rhpc.RhpcEncoding(FIELDS)
    assert encoding.names == ["focality", "cT", "laterality"]  # race is no rhpc variable
    assert (encoding.levels, encoding.known_levels, encoding.unknown_level) == ([3, 4, 2], [2, 3, 2], [2, 3, -1])
    item = encoding.encode("P1", {"age": 41, "race": "Asian", "focality": "unknown", "cT": "T3",
                                  "laterality": "right"})
    assert item["rhpc_index"].tolist() == [2, 2, 1]  # unknown is a level of its own
    assert item["rhpc_target"].tolist() == [-1, 2, 1]  # ... and an ignored knowledge target
    assert item["age"].tolist() == [41.0] and item["age"].dtype == np.float32
    assert np.isnan(encoding.encode("P2", {"focality": "unifocal", "cT": "T1", "laterality": "left"})["age"][0])
    with pytest.raises(ValueError, match="patient P3: rhpc field 'cT' has unknown value 'T9'"):
        encoding.encode("P3", {"age": 50, "focality": "unifocal", "cT": "T9", "laterality": "left"})
    with pytest.raises(ValueError, match="patient P4: rhpc field 'laterality' has no value"):
        encoding.encode("P4", {"age": 50, "focality": "unifocal", "cT": "T1"})
    with pytest.raises(ValueError, match="'age'"):
        s.rhpc.RhpcEncoding(FIELDS[1:])
    assert s.rhpc.age_statistics([40.0, 60.0, float("nan")]) == (50.0, 10.0)
    synthetic = s.rhpc.RhpcEncoding(preset("synthetic").field_record())  # as a prepared cohort records it
    assert len(synthetic.names) == 19 and all(u == n - 1 for u, n in zip(synthetic.unknown_level, synthetic.levels))


def test_age_is_z_scored_by_buffers_saved_with_the_model(s):
    torch.manual_seed(0)
    net = s.networks.RhpcNet(FIELDS, embed_dim=8, age_stats=(50.0, 10.0)).eval()
    restored = s.networks.RhpcNet(FIELDS, embed_dim=8)  # default statistics (0, 1) until loaded
    restored.load_state_dict(net.state_dict())
    assert restored.extractor.age_mean == 50 and restored.extractor.age_std == 10
    index = torch.tensor([[0, 1, 0], [2, 3, 1]])
    standard = s.networks.RhpcNet(FIELDS, embed_dim=8).eval()
    standard.load_state_dict({**net.state_dict(), "extractor.age_mean": torch.tensor(0.0),
                              "extractor.age_std": torch.tensor(1.0)})
    ages = torch.tensor([[60.0], [35.0]])
    torch.testing.assert_close(restored.eval()(index, ages), standard(index, (ages - 50) / 10))
    torch.testing.assert_close(net(index, torch.tensor([[float("nan")], [50.0]]))[0],
                               net(index, torch.tensor([[50.0], [50.0]]))[0])  # unknown age: the training mean
    assert net(index, ages).shape == (2, 1) and net.features(index, ages).shape == (2, 256)
    with pytest.raises(ValueError, match="outside its variable's levels"):
        net(torch.tensor([[0, 4, 0]]), ages[:1])


@pytest.mark.parametrize("visit_mask,phase", [
    ([[1, 1, 1], [1, 1, 1]], [[0, 1, 2], [0, 1, 2]]),  # pre, mid, post
    ([[1, 0, 0], [1, 1, 0]], [[0, 0, 0], [0, 2, 0]]),  # pre only; pre and post
])
def test_imr_outputs(s, visit_mask, phase):
    index, age = _rhpc(2)
    net = s.networks.IMRrhpc(FIELDS, **TINY).eval()
    out = net.outputs(_mri(2), torch.tensor(visit_mask), torch.tensor(phase), index, age)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "pred": (2, 1), "knowledge_rhpc": (2, 7), "knowledge_age": (2, 1), "knowledge_pcr": (2, 1)}
    torch.testing.assert_close(net(_mri(2), torch.tensor(visit_mask), torch.tensor(phase), index, age), out["pred"])
    assert net(_mri(2, visits=1), rhpc_index=index, age=age).shape == (2, 1)  # one visit, taken as pre
    ablated = s.networks.IMRrhpc(FIELDS, knowledge_predictor=False, **TINY).eval()
    assert list(ablated.outputs(_mri(2), torch.tensor(visit_mask), torch.tensor(phase), index, age)) == ["pred"]


def test_img_outputs(s):
    index, age = _rhpc(2)
    net = s.networks.IMGrhpc(FIELDS, **TINY).eval()
    for mask in ([[1, 1, 1, 1], [1, 1, 1, 1]], [[1, 1, 0, 0], [0, 0, 0, 1]]):
        out = net.outputs(_mg(2), torch.tensor(mask), index, age)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "pred": (2, 1), "knowledge_rhpc": (2, 7), "knowledge_age": (2, 1), "knowledge_pcr": (2, 1)}
    with pytest.raises(ValueError, match="L_CC, L_MLO, R_CC, R_MLO"):
        net(_mg(2)[:, :3])


def test_unavailable_images_do_not_influence_the_output(s):
    """In training mode too: an unavailable visit or view never reaches batch norm."""
    torch.manual_seed(0)
    index, age = _rhpc(2)
    mri = s.networks.IMRrhpc(FIELDS, **TINY).train()
    mask, phase = torch.tensor([[1, 0, 0], [1, 0, 1]]), torch.tensor([[0, 1, 2], [0, 1, 2]])
    image = _mri(2)
    changed = image.clone()
    changed[0, 1:], changed[1, 1] = 100.0, -7.0
    torch.testing.assert_close(mri(image, mask, phase, index, age),
                               mri(changed, mask, torch.tensor([[0, 2, 1], [0, 0, 2]]), index, age), rtol=0, atol=0)
    mg = s.networks.IMGrhpc(FIELDS, **TINY).train()
    views = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]])
    image = _mg(2)
    changed = image.clone()
    changed[0, 1], changed[0, 3], changed[1, 0] = 5.0, -5.0, 9.0
    torch.testing.assert_close(mg(image, views, index, age), mg(changed, views, index, age), rtol=0, atol=0)


@pytest.mark.parametrize("time_embedding", [True, False])
def test_time_embedding_tells_the_phases_apart(s, time_embedding):
    torch.manual_seed(0)
    index, age = _rhpc(1)
    net = s.networks.IMRrhpc(FIELDS, time_embedding=time_embedding, **TINY).eval()
    image, mask = _mri(1), torch.ones(1, 3)
    ordered = net(image, mask, torch.tensor([[0, 1, 2]]), index, age)
    relabelled = net(image, mask, torch.tensor([[2, 0, 1]]), index, age)  # same images, other phases
    assert torch.allclose(ordered, relabelled) != time_embedding
    # the visits' order does not matter, only which image has which phase
    torch.testing.assert_close(net(image[:, [2, 0, 1]], mask, torch.tensor([[2, 0, 1]]), index, age), ordered)


def test_knowledge_loss_ignores_unknown_targets(s):
    torch.manual_seed(0)
    loss = s.losses.KnowledgeLoss(FIELDS, age_stats=(50.0, 10.0))
    outputs = {"pred": torch.randn(2, 1), "knowledge_pcr": torch.randn(2, 1),
               "knowledge_rhpc": torch.randn(2, 7, requires_grad=True), "knowledge_age": torch.randn(2, 1)}
    label = torch.tensor([[1.0], [0.0]])
    target = torch.tensor([[-1, 2, 1], [-1, -1, 0]])  # focality unknown for both, cT for the second
    age = torch.tensor([[60.0], [float("nan")]])
    value = loss(outputs, label, target, age)
    assert torch.isfinite(value)
    value.backward()
    assert not outputs["knowledge_rhpc"].grad[:, :2].any() and not outputs["knowledge_rhpc"].grad[1, 2:5].any()
    changed = {**outputs, "knowledge_rhpc": outputs["knowledge_rhpc"].detach().clone(),
               "knowledge_age": outputs["knowledge_age"].clone()}
    changed["knowledge_rhpc"][:, :2] += 5.0  # focality logits
    changed["knowledge_rhpc"][1, 2:5] -= 3.0  # cT logits of the second patient
    changed["knowledge_age"][1] = 1e3  # an unknown age
    torch.testing.assert_close(loss(changed, label, target, age), value.detach())
    changed["knowledge_rhpc"][0, 2] += 1.0  # a known target's logit counts
    assert not torch.allclose(loss(changed, label, target, age), value.detach())
    terms = loss.terms(outputs, label, target, age)
    assert torch.isclose(terms["knowledge_age"], (outputs["knowledge_age"][0, 0] - 1.0) ** 2)  # z-scored age
    assert list(loss.terms({"pred": outputs["pred"]}, label, target, age)) == ["pcr"]  # the ablation
    assert loss.terms(outputs, label, torch.full((2, 3), -1), age)["knowledge_rhpc"] == 0  # nothing known: no NaN
    with pytest.raises(ValueError, match="unknown loss weights"):
        s.losses.KnowledgeLoss(FIELDS, weights={"rhpc": 2.0})


def test_auroc_matches_scikit_learn(s):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.random(60) + 0.3 * y, 1)  # many ties
    assert s.ensemble.auroc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        s.ensemble.auroc(np.ones(3), np.arange(3.0))


def test_ensemble_weight_is_the_brute_force_best(s):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    p_mg, p_mr = 1 / (1 + np.exp(-(y + rng.normal(0, 1.2, 80)))), 1 / (1 + np.exp(-(y + rng.normal(0, 0.8, 80))))
    p_mg[:10], p_mr[10:15] = np.nan, np.nan  # patients with one modality
    weight = s.ensemble.ensemble_weight(y, p_mg, p_mr)

    def fused(w):
        return np.where(np.isnan(p_mg), p_mr, np.where(np.isnan(p_mr), p_mg, w * p_mg + (1 - w) * p_mr))

    best = max(roc_auc_score(y, fused(w)) for w in np.linspace(0, 1, 101))
    assert roc_auc_score(y, fused(weight)) == pytest.approx(best, abs=1e-12)
    assert 0 < weight < 1
    np.testing.assert_allclose(s.ensemble.mrp_probability(p_mg, p_mr, weight), fused(weight))
    np.testing.assert_array_equal(s.ensemble.mrp_probability([np.nan, 0.2], [0.7, np.nan], 0.3), [0.7, 0.2])
    with pytest.raises(ValueError, match="neither"):
        s.ensemble.mrp_probability([np.nan], [np.nan], 0.5)


def test_torchscript(s):
    index, age = _rhpc(2)
    mri = s.networks.IMRrhpc(FIELDS, **TINY).eval()
    scripted = torch.jit.script(mri)
    mask, phase = torch.tensor([[1, 0, 1], [1, 1, 1]]), torch.tensor([[0, 0, 2], [0, 1, 2]])
    torch.testing.assert_close(scripted(_mri(2), mask, phase, index, age), mri(_mri(2), mask, phase, index, age))
    torch.testing.assert_close(scripted.outputs(_mri(2), mask, phase, index, age)["knowledge_rhpc"],
                               mri.outputs(_mri(2), mask, phase, index, age)["knowledge_rhpc"])
    with pytest.raises(torch.jit.Error, match="rhpc_index is required"):  # laterality has no unknown level
        scripted(_mri(2))
    # the image alone (shape checks, export): every visit available, in phase order, every rhpc variable unknown
    assert torch.jit.script(s.networks.IMRrhpc(FIELDS[:4], **TINY).eval())(_mri(2)).shape == (2, 1)
    mg = s.networks.IMGrhpc(FIELDS, knowledge_predictor=False, **TINY).eval()
    views = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(torch.jit.script(mg)(_mg(2), views, index, age), mg(_mg(2), views, index, age))
    net = s.networks.RhpcNet(FIELDS, embed_dim=8).eval()
    torch.testing.assert_close(torch.jit.script(net)(index, age), net(index, age))
