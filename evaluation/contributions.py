"""Modality and rhpc-variable contributions of the MRP networks by integrated gradients (Gao et
al., "Modality contribution analysis" and Fig. 4), on each split's test patients only.

For every finished MRP training under an evaluation output folder
(``OUT/models/mrp_fusion.<model>[+<override>]/<split>/models/model_<model>.pt`` beside its
``trained.json``), the network is rebuilt from the settings saved in its checkpoint and its pCR
logit is attributed, patient by patient, for the patients of the split's test fold that have the
network's input (``scripts.data.select``: a mammogram for iMGrhpc, an MRI visit for iMRrhpc).

What is attributed, and from which baseline (``integrated_gradients``):

- **Image** (iMRrhpc: every available MRI visit; iMGrhpc: every available view): the voxels of
  ``image`` from a zero image (no enhancement; what the bundle fills in for a missing visit or
  view). ``visit_mask``, ``phase`` and ``view_mask`` are held fixed: they say which images exist
  and when, they are not measurements.
- **rhpc variables and age**: the outputs of the rhpc extractor's categorical embedding (one
  ``embed_dim`` vector per variable) and of its age layer (the Linear on the z-scored age), each
  from zero, integrated by ``IntegratedGradients`` over these embedded inputs (forward hooks put
  the interpolated values in place of the layers' outputs). Level indices are integers, so there is
  no straight path between two of them to integrate along; in the embedding space there is.
  ``LayerIntegratedGradients`` would integrate the same layers, but its baseline is the layer's
  output for a baseline *input*, i.e. the embedding of some level (``unknown``, say), which not
  every variable has and which is a learned level that can carry information itself. From zero,
  every variable (and age) starts from "adds nothing to the extractor's MLP input" (ELU(0) = 0),
  the same neutral point for all of them and whatever their levels.

The image and the embedded rhpc inputs are attributed in one run, so by completeness the
attributions of one patient add up to f(x) - f(zero image, zero embeddings) (checked: the largest
gap is printed). An item's attribution is the signed sum over its elements (the voxels of all the
patient's images; the embedding dimensions of a variable): the items then decompose that logit
difference additively, and the image's weight does not grow with its number of voxels as a sum of
absolute voxel attributions would. Shares are taken among items of one level: per attribute
(each rhpc variable, age, the image modality as one attribute, as Fig. 4 lists MRI and
mammography among the attributes) |item| / sum over attributes of |item|; per modality the same
with two items, the image and the rhpc inputs together (the signed sum over every variable and
age, so variables that pull in opposite directions offset each other as voxels do).
``signed_mean`` keeps the sign (positive: towards pCR, Fig. 4's "favorable"). With several inner
models per test fold (nested CV) a patient's shares are first averaged over them.

``contributions.csv``: ``network, item, kind, group, mean, std, patients, signed_mean``, per
network (``rhpc``, ``img``, ``imr``; ablations as ``imr+no_knowledge``), ``kind`` ``modality``
(items: the image modality, ``rhpc``) or ``variable`` (the attributes); ``group`` is Table 2's
(radiological, histopathological, personal, clinical) by field name, the cohort's field group for
a field Table 2 does not name (the cohort records only ``rhpc``), radiological for the image
modality (the paper counts MRI and mammography among the radiological contributions); mean and
standard deviation over the test patients.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from captum.attr import IntegratedGradients
from monai.transforms import Compose
from torch import nn

from preprocessing.atomic import atomic_write_csv

from .methods import BUNDLES, MRP

# Table 2 of Gao et al.: the group of each rhpc variable (field names of the cohort schemas)
TABLE2_GROUPS = {
    "radiological": ("tumour_location", "laterality", "focality", "breast_density"),
    "histopathological": ("molecular_subtype", "histology", "differentiation", "in_situ_component"),
    "personal": ("age", "sex", "menarche", "weight", "menopausal_status", "brca1", "brca2", "chek2", "tp53"),
    "clinical": ("cT", "cN", "cM", "chemotherapy", "hormonal_therapy", "immunotherapy"),
}
GROUP_OF = {name: group for group, names in TABLE2_GROUPS.items() for name in names}
MODALITY = {"imr": "MRI", "img": "mammogram"}  # radiological, as the paper counts them
TITLES = {"rhpc": "rhpc", "img": "iMGrhpc", "imr": "iMRrhpc"}
COLOURS = {"radiological": "tab:blue", "histopathological": "tab:red", "personal": "tab:green",
           "clinical": "tab:orange"}
COLUMNS = ["network", "item", "kind", "group", "mean", "std", "patients", "signed_mean"]
IMAGE_BATCH = 16  # integration points of an image network evaluated at once (memory)
GAP_WARNING = 0.05  # a larger completeness gap asks for more integration steps
SPLIT = re.compile(r"test(\d+)_val(\d+)")


@cache
def bundle_scripts() -> SimpleNamespace:
    """The mrp_fusion bundle's ``scripts`` package, imported under a name of its own
    (``mrp_fusion_scripts``), so that it never meets another bundle's ``scripts`` package."""
    name, folder = "mrp_fusion_scripts", BUNDLES / MRP / "scripts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    return SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}")
                              for m in ("checkpoint", "data", "engine", "networks", "rhpc")})


# --- integrated gradients ---

@dataclass
class Attributions:
    """Per patient (B,): signed attribution of the image (None for the rhpc model), of each rhpc
    variable (B, K) and of age; ``delta``: sum of all attributions - (f(x) - f(baseline))."""
    image: torch.Tensor | None
    variables: torch.Tensor
    age: torch.Tensor
    delta: torch.Tensor

    def items(self) -> torch.Tensor:
        """(B, items): the image first when there is one, the variables, age."""
        parts = ([self.image[:, None]] if self.image is not None else []) + [self.variables, self.age[:, None]]
        return torch.cat(parts, dim=1)


def rhpc_extractor(network: nn.Module) -> nn.Module:
    return network.extractor if hasattr(network, "extractor") else network.rhpc


@contextmanager
def _hooked(modules: Sequence[nn.Module], hook):
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_outputs(network: nn.Module, modules: Sequence[nn.Module], args: Sequence) -> list[torch.Tensor]:
    seen = {}
    with _hooked(modules, lambda module, inputs, output: seen.__setitem__(module, output.detach())), torch.no_grad():
        network(*args)
    return [seen[m] for m in modules]


def integrated_gradients(network: nn.Module, model: str, inputs: dict[str, torch.Tensor], steps: int = 50,
                         internal_batch_size: int | None = None) -> Attributions:
    """Integrated gradients of the pCR logit of ``network`` (an MRP ``model``: rhpc, imr, img)
    for a batch of its forward arguments (``inputs``: ``scripts.engine.INPUTS[model]`` by name),
    from a zero image and zero outputs of the rhpc extractor's categorical embedding and age
    layer (module docstring), ``steps`` Gauss-Legendre points."""
    names = bundle_scripts().engine.INPUTS[model]
    args = [inputs[n] for n in names]
    extractor = rhpc_extractor(network)
    layers = (extractor.categorical, extractor.age)
    embedded = tuple(_layer_outputs(network, layers, args))
    has_image = model != "rhpc"
    attributed = ((args[0],) if has_image else ()) + embedded
    fixed = tuple(args[1:]) if has_image else tuple(args)  # captum repeats them along the batch
    replacement: dict[nn.Module, torch.Tensor] = {}

    def substitute(module, module_inputs, output):
        value = replacement[module]
        if value.shape != output.shape:
            raise RuntimeError(f"embedded input of shape {tuple(value.shape)} for an output of {tuple(output.shape)}")
        return value

    def forward(*values):
        replacement.update(zip(layers, values[len(attributed) - 2:len(attributed)]))
        image = values[:1] if has_image else ()
        with _hooked(layers, substitute):
            return network(*image, *values[len(attributed):])[:, 0]

    baselines = tuple(torch.zeros_like(t) for t in attributed)
    found, delta = IntegratedGradients(forward).attribute(
        attributed, baselines=baselines, additional_forward_args=fixed, n_steps=steps,
        internal_batch_size=internal_batch_size, return_convergence_delta=True)
    *image, categorical, age = [a.detach() for a in found]
    return Attributions(image[0].flatten(1).sum(1) if image else None, categorical.sum(-1), age.sum(-1),
                        delta.detach())


def shares(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per patient (rows) and item (columns of ``values``, signed attributions): |item| / sum of
    |items|, and the signed item / sum of |items|."""
    values = values.double().cpu().numpy()
    total = np.abs(values).sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(values) / total, values / total


def modalities(attributions: Attributions) -> torch.Tensor:
    """(B, modalities): the image's attribution (when there is one), then the rhpc variables' and
    age's together, each the signed sum over all of its elements (as an item is)."""
    rhpc = attributions.variables.sum(1) + attributions.age
    return torch.stack(([attributions.image] if attributions.image is not None else []) + [rhpc], dim=1)


# --- trained networks of an evaluation output folder ---

@dataclass(frozen=True)
class TrainedNetwork:
    name: str  # rhpc, img, imr, imr+no_knowledge ...
    model: str  # rhpc, img, imr
    split: str
    test_fold: int
    checkpoint: Path


def trained_networks(out: Path) -> list[TrainedNetwork]:
    """Every finished MRP training (``trained.json`` beside it) under ``out/models``."""
    found = []
    for path in sorted(Path(out).glob(f"models/{MRP}.*/*/models/model_*.pt")):
        run_dir = path.parent.parent
        split = SPLIT.fullmatch(run_dir.name)
        if split is None or not (run_dir / "trained.json").is_file():
            continue
        name = run_dir.parent.name[len(MRP) + 1:]
        found.append(TrainedNetwork(name, path.stem[len("model_"):], run_dir.name, int(split.group(1)), path))
    return found


def load_network(trained: TrainedNetwork, data: Path) -> tuple[nn.Module, dict, list[dict]]:
    """The network with its trained weights (eval mode), its saved settings and rhpc fields; a
    model trained on another cohort than ``data`` is refused (its test fold would be other patients)."""
    record = json.loads((trained.checkpoint.parent.parent / "trained.json").read_text())
    digest = hashlib.sha256((Path(data) / "datalist.json").read_bytes()).hexdigest()[:16]
    if record.get("cohort") != digest:
        raise ValueError(f"{trained.checkpoint} was trained on another cohort (datalist digest {record.get('cohort')}, "
                         f"{data} has {digest}): give the --data it was trained on")
    s = bundle_scripts()
    settings = s.checkpoint.saved_settings(str(trained.checkpoint), trained.model)
    fields = s.data.matching_fields(settings["clinical_fields"], str(data))
    network = s.checkpoint.network_from_settings(settings, fields)
    network.load_state_dict(torch.load(trained.checkpoint, map_location="cpu", weights_only=True)["model"])
    return network.eval(), settings, fields


def patient_inputs(trained: TrainedNetwork, settings: dict, fields: list[dict], data: Path,
                   visits: Sequence[str] | None = None) -> list[dict]:
    """The forward arguments (batch of one, by name) and ``id`` of each test-fold patient with the
    network's input, loaded as the bundle's evaluation loads them; ``visits``: the MRI visits a
    patient contributes (default: every visit of the model)."""
    d = bundle_scripts().data
    model, dataset = trained.model, str(data)
    chosen = list(visits or settings["visits"])
    level = d.log.level
    d.log.setLevel(logging.WARNING)  # who lacks the input is counted by the caller, not listed
    try:
        items = d.select(d.load_datalist(dataset), model, [trained.test_fold], fields,
                         visits=chosen if model == "imr" else (), model_visits=settings["visits"], allow_empty=True)
    finally:
        d.log.setLevel(level)
    transform = Compose(d.load_transforms(model, settings["visits"], settings["visit_phases"],
                                          d.channel_index(dataset, settings["channel"], required=model == "imr"),
                                          settings["spatial_size"], settings["mg_size"]) + d.final_transforms(model))
    names = bundle_scripts().engine.INPUTS[model]
    patients = []
    for item in items:
        item = transform(item)
        patients.append({"id": item["id"], **{n: torch.as_tensor(np.asarray(item[n]))[None] for n in names}})
    return patients


def network_shares(trained: TrainedNetwork, data: Path, steps: int = 50, visits: Sequence[str] | None = None,
                   device: torch.device | None = None) -> tuple[pd.DataFrame, float]:
    """Per test patient and item: ``share``, ``signed``; and the largest completeness gap
    |sum of attributions - (f(x) - f(baseline))| relative to the patient's summed |attributions|."""
    network, settings, fields = load_network(trained, data)
    device = device or torch.device("cpu")
    network.to(device)
    modality = MODALITY.get(trained.model)
    items = ([modality] if modality else []) + bundle_scripts().rhpc.RhpcEncoding(fields).names + ["age"]
    field_group = {f["name"]: f.get("group", "") for f in fields}
    groups = {item: "radiological" if item == modality else GROUP_OF.get(item) or field_group.get(item, "")
              for item in items}
    rows, gap = [], 0.0
    for patient in patient_inputs(trained, settings, fields, data, visits):
        inputs = {k: v.to(device) for k, v in patient.items() if k != "id"}
        attributions = integrated_gradients(network, trained.model, inputs, steps,
                                            internal_batch_size=None if trained.model == "rhpc" else IMAGE_BATCH)
        size = float(attributions.items().abs().sum())
        gap = max(gap, float(attributions.delta.abs().max()) / max(size, 1e-12))
        for kind, names, values in (("modality", ([modality] if modality else []) + ["rhpc"], modalities(attributions)),
                                    ("variable", items, attributions.items())):
            for item, share, signed in zip(names, *(a[0] for a in shares(values))):
                rows.append({"network": trained.name, "split": trained.split, "id": patient["id"], "item": item,
                             "kind": kind, "group": groups.get(item, "rhpc"), "share": share, "signed": signed})
    return pd.DataFrame(rows), gap


def _network_order(name: str) -> tuple:
    """rhpc, img, imr, then the ablations."""
    model, _, variant = name.partition("+")
    return bool(variant), list(TITLES).index(model) if model in TITLES else len(TITLES), name


def summarise(per_patient: pd.DataFrame) -> pd.DataFrame:
    """``COLUMNS``: per network (rhpc, img, imr, then ablations), the modality rows, then the
    attributes by mean share, largest first; a patient's shares are first averaged over the inner
    models that tested them."""
    keys = ["network", "kind", "item", "group"]
    patients = per_patient.groupby(keys + ["id"], as_index=False, sort=False)[["share", "signed"]].mean()
    table = patients.groupby(keys, sort=False).agg(
        mean=("share", "mean"), std=("share", lambda v: float(np.std(v))), patients=("id", "nunique"),
        signed_mean=("signed", "mean")).reset_index()
    order = sorted(set(table["network"]), key=_network_order)
    table = table.assign(_n=table["network"].map({n: k for k, n in enumerate(order)}),
                         _k=(table["kind"] == "variable").astype(int))
    return table.sort_values(["_n", "_k", "mean"], ascending=[True, True, False])[COLUMNS].reset_index(drop=True)


def contributions_figure(table: pd.DataFrame):
    """Fig. 4-style horizontal bars: mean share of |attribution| per attribute (the image
    modality hatched), error bars = standard deviation, colours by group; one panel per network."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    networks = list(dict.fromkeys(table["network"]))
    rows = int(table[table["kind"] == "variable"].groupby("network").size().max())
    fig, axes = plt.subplots(1, len(networks), figsize=(4.6 * len(networks), 0.27 * rows + 1.8), squeeze=False)
    for ax, name in zip(axes[0], networks):
        mine = table[table["network"] == name]
        bars = mine[mine["kind"] == "variable"].sort_values("mean")
        drawn = ax.barh(bars["item"], bars["mean"], xerr=bars["std"], error_kw={"lw": 0.8, "capsize": 2},
                        color=[COLOURS.get(g, "grey") for g in bars["group"]])
        for bar, item in zip(drawn, bars["item"]):
            if item in MODALITY.values():
                bar.set_hatch("//")
        model, _, variant = name.partition("+")
        title = TITLES.get(model, model) + (f" ({variant})" if variant else "")
        split = mine[mine["kind"] == "modality"].set_index("item")
        if len(split) > 1:
            title += "\n" + ", ".join(f"{i} {r['mean']:.2f} ± {r['std']:.2f}" for i, r in split.iterrows())
        ax.set_title(f"{title}\n(n = {int(mine['patients'].max())} test patients)", fontsize="medium")
        ax.set_xlabel("share of |attribution| (mean ± SD)")
        ax.set_xlim(left=0)
        ax.tick_params(axis="y", labelsize="small")
    groups = [g for g in COLOURS if g in set(table["group"])]
    handles = [Patch(color=COLOURS[g], label=g) for g in groups] + \
        [Patch(facecolor="white", edgecolor="black", hatch="//", label="image modality")]
    fig.legend(handles=handles, loc="upper right", fontsize="small", frameon=False, ncol=len(handles))
    fig.suptitle("Contributions by integrated gradients (test patients)", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def write_contributions(data: Path, out: Path, steps: int = 50, visits: Sequence[str] | None = None,
                        report: Path | None = None, log=print, ablations: bool = True) -> pd.DataFrame:
    """Attribute every trained MRP network under ``out`` on its test patients; write
    ``report/contributions.csv`` and ``report/figures/contributions.{png,svg}`` (default
    ``report``: ``out/report``, where cv, holdout and benchmark write their report).
    ``ablations=False`` leaves out the networks trained with an override file (``+``)."""
    from .figures import save

    networks = [n for n in trained_networks(out) if ablations or "+" not in n.name]
    if not networks:
        raise FileNotFoundError(f"no trained MRP network under {Path(out) / 'models'} "
                                f"({MRP}.<model>/<split>/models/model_<model>.pt with trained.json); "
                                "run cv, holdout or benchmark with MRP methods into it first")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folds = [e.get("fold") for e in json.loads((Path(data) / "datalist.json").read_text())["training"]]
    parts = []
    for trained in networks:
        frame, gap = network_shares(trained, data, steps, visits, device)
        count = frame["id"].nunique() if len(frame) else 0
        log(f"{trained.name} {trained.split}: {count} of the {folds.count(trained.test_fold)} patients of test fold "
            f"{trained.test_fold} have its input; largest completeness gap {gap:.2%} of the summed |attributions|"
            + (" (increase --steps)" if gap > GAP_WARNING else ""))
        parts.append(frame)
    per_patient = pd.concat(parts, ignore_index=True)
    if per_patient.empty:
        raise ValueError("no test patient has the inputs of any trained MRP network")
    table = summarise(per_patient)
    report = Path(report or Path(out) / "report")
    atomic_write_csv(table, report / "contributions.csv")
    save(contributions_figure(table), report / "figures", "contributions")
    return table
