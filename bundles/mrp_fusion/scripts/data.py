"""Prepared-cohort access for the MRP fusion bundle: datalist, folds, items and transforms of the
three models (``rhpc``, ``imr``, ``img``).

A prepared cohort (``python -m preprocessing prepare``) holds per patient the MRI visits it has
(``images/<id>/<visit>.nii.gz``, channels last, named by the datalist's ``channels``; the MRP models
read ``subtraction``, first post-contrast minus pre-contrast signal), the pre-treatment mammogram
views it has (``mammograms: {"L_CC": path, ...}``, 2-D, normalised to [0, 1]) and the clinical
record with the rhpc fields (``clinical_fields`` of the datalist).

Items carry the rhpc encoding (``rhpc_index``, raw ``age``, ``rhpc_target``), the label and the
paths of the images the model reads. The MRI transforms stack the visits in the model's visit
order into ``image`` (V, 1, H, W, D) with zeros where a patient has no image, ``visit_mask`` (V,)
and ``phase`` (V,: pre 0, mid 1, post 2); the mammogram transforms stack the views L_CC, L_MLO,
R_CC, R_MLO into ``image`` (4, 1, H, W) with ``view_mask`` (4,). During the transforms the visits
(views) are the channels of one image, so a spatial augmentation draws once per patient and moves
every visit alike; ``final_transforms`` adds the per-visit channel axis the networks take.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from functools import partial

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    EnsureTyped,
    Lambdad,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandomizableTransform,
    Resized,
)

from .networks import PHASES, VIEWS
from .rhpc import RhpcEncoding, age_statistics as _age_statistics

log = logging.getLogger(__name__)

MODELS = ("rhpc", "imr", "img")
# the subtraction image is in the scanner's signal units (tens to hundreds): divided by 100, as the
# pCR bundles divide it, so that intensity changes between visits and patients stay visible
MR_SCALE = 100.0
MG_PREFIX = "mg_"  # item keys of the mammogram views: mg_L_CC, ...


def check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    return model


def _datalist(dataset_dir: str) -> dict:
    path = os.path.join(dataset_dir, "datalist.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (dataset_dir must be a prepared cohort)")
    with open(path) as f:
        return json.load(f)


def cohort_fields(dataset_dir: str) -> list[dict]:
    """The clinical fields the prepared cohort records (its encoding)."""
    fields = _datalist(dataset_dir).get("clinical_fields")
    if not fields:
        raise ValueError(f"{os.path.join(dataset_dir, 'datalist.json')}: no clinical_fields; "
                         "prepare the cohort again with this version of preprocessing")
    return fields


def channel_index(dataset_dir: str, channel: str, required: bool = True) -> int:
    """Index of the MRI channel named ``channel`` in the cohort's images (``channels`` of its
    datalist); an error naming the channels the cohort has when it lacks it (0 when not
    ``required``: the models without MRI read no channel)."""
    channels = _datalist(dataset_dir).get("channels") or []
    if channel not in channels:
        if not required:
            return 0
        raise ValueError(f"the cohort in {dataset_dir} has no MRI channel {channel!r} (it has: "
                         f"{', '.join(channels) or 'none recorded'}); prepare it again with this version of "
                         "preprocessing")
    return channels.index(channel)


def _rhpc_record(fields: Sequence[dict]) -> list[dict]:
    encoding = RhpcEncoding(fields)
    return [f for f in fields if f.get("name") == "age" and f.get("group") == "clinical"] + encoding.fields


def matching_fields(model_fields: list[dict], dataset_dir: str) -> list[dict]:
    """``model_fields`` when the cohort at ``dataset_dir`` records the same rhpc fields (names,
    levels) and age, or when there is no cohort there (exporting or checking a network)."""
    if not os.path.isfile(os.path.join(dataset_dir, "datalist.json")):
        return model_fields
    cohort, model = _rhpc_record(cohort_fields(dataset_dir)), _rhpc_record(model_fields)
    if cohort != model:
        differ = sorted({f["name"] for f in cohort} ^ {f["name"] for f in model}) or sorted(
            f["name"] for f in cohort if f not in model)
        raise ValueError(f"the model's rhpc encoding does not match the cohort in {dataset_dir} "
                         f"(fields or levels differ: {', '.join(differ)}); prepare the cohort with the "
                         "model's schema, or train a model on this cohort")
    return model_fields


def load_datalist(dataset_dir: str) -> list[dict]:
    """Entries of ``dataset_dir/datalist.json`` with MRI and mammogram paths made absolute."""
    datalist = _datalist(dataset_dir)
    entries = []
    for entry in datalist["training"]:
        entry = dict(entry)
        for visit in datalist.get("visits", ()):
            if entry.get(visit):
                entry[visit] = os.path.join(dataset_dir, entry[visit])
        if entry.get("mammograms"):
            entry["mammograms"] = {v: os.path.join(dataset_dir, p) for v, p in entry["mammograms"].items()}
        entries.append(entry)
    return entries


def training_folds(entries: list[dict], val_fold: int, test_fold: int) -> list[int]:
    """Every fold of the datalist except the validation and test folds."""
    folds = sorted({e["fold"] for e in entries} - {val_fold, test_fold})
    if val_fold == test_fold or not folds:
        raise ValueError(f"val_fold {val_fold} and test_fold {test_fold} leave no training fold")
    return folds


def patient_folds(entries: list[dict], folds: Sequence[int] | None = None) -> dict[str, int | None]:
    """Id -> fold of the patients in ``folds`` (all when None)."""
    return {e["id"]: e.get("fold") for e in entries if folds is None or e.get("fold") in folds}


def write_exclusions(path: str, rows: list[dict]) -> None:
    """``id, fold, reason`` of the patients a model or the ensemble leaves out."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "fold", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def select(entries: list[dict], model: str, folds: Sequence[int] | None, clinical_fields: Sequence[dict],
           visits: Sequence[str] = (), model_visits: Sequence[str] | None = None, exclusions: str | None = None,
           allow_empty: bool = False) -> list[dict]:
    """Items of ``model`` for the patients in ``folds`` (all when None): id, fold, rhpc encoding
    (``rhpc_index``, ``age``, ``rhpc_target``), ``label`` when known, and the images the model reads:

    - ``rhpc``: none; every patient.
    - ``imr``: the patient's MRI visits among ``visits`` (a subset of the model's ``model_visits``);
      a patient with none of them is excluded.
    - ``img``: the patient's mammogram views (L_CC, L_MLO, R_CC, R_MLO) as ``mg_<view>``; a patient
      without any is excluded.

    Excluded patients are logged and, with ``exclusions``, written to that CSV (``id, fold,
    reason``). No item at all is an error unless ``allow_empty``.
    """
    check_model(model)
    visits = list(visits)
    if model == "imr":
        if not visits:
            raise ValueError("the MRI model needs at least one visit")
        extra = [v for v in visits if model_visits is not None and v not in model_visits]
        if extra:
            raise ValueError(f"visit(s) {', '.join(extra)} are not among the model's visits {list(model_visits)}")
    encoding = RhpcEncoding(clinical_fields)
    items, excluded = [], []
    for entry in entries:
        if folds is not None and entry.get("fold") not in folds:
            continue
        item = {"id": entry["id"], "fold": entry.get("fold", -1)}
        if model == "imr":
            available = [v for v in visits if entry.get(v)]
            if not available:
                has = [v for v in entry.get("ftv_ml", {}) if entry.get(v)]
                excluded.append({"id": entry["id"], "fold": entry.get("fold"),
                                 "reason": f"no MRI visit among {', '.join(visits)} (has: {', '.join(has) or 'none'})"})
                continue
            item.update({v: entry[v] for v in available})
        elif model == "img":
            views = {v: p for v, p in (entry.get("mammograms") or {}).items() if v in VIEWS}
            if not views:
                excluded.append({"id": entry["id"], "fold": entry.get("fold"), "reason": "no pre-treatment mammogram"})
                continue
            item.update({MG_PREFIX + v: p for v, p in views.items()})
        item.update(encoding.encode(entry["id"], entry.get("clinical") or {}))
        if entry.get("label") is not None:
            item["label"] = np.asarray([entry["label"]], dtype=np.float32)
        items.append(item)
    for row in excluded:
        log.info("patient %s not used by the %s model: %s", row["id"], model, row["reason"])
    if exclusions:
        write_exclusions(exclusions, excluded)
    if not items and not allow_empty:
        raise ValueError(f"no patient in fold(s) {folds} has the inputs of the {model} model"
                         + (f" ({len(excluded)} excluded, reasons in {exclusions})" if exclusions else ""))
    return items


def age_statistics(items: list[dict]) -> tuple[float, float]:
    """Mean and standard deviation of the known ages of ``items`` (the training patients)."""
    return _age_statistics([float(item["age"][0]) for item in items])


def positive_class_weight(items: list[dict], device=None) -> torch.Tensor:
    """Weight of the pCR class in the validation BCE: non-pCR / pCR training patients, so that
    validation weighs the classes as the class-balanced sampler trains them."""
    labels = [float(item["label"][0]) for item in items]
    positives = sum(labels)
    if not 0 < positives < len(labels):
        raise ValueError("the training patients hold one class only")
    return torch.tensor([(len(labels) - positives) / positives], device=device)


def class_balanced_weights(items: list[dict]) -> list[float]:
    """Sampling weight 1 / (patients of the same class)."""
    labels = [float(item["label"][0]) for item in items]
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"training patients are all of one class (pCR = {labels[0]:g})")
    return [1.0 / counts[label] for label in labels]


class StackSlotsd(MapTransform):
    """Stack the images of the keys a patient has (one channel each) in ``keys`` order into
    ``image`` (N, *spatial), zeros where the patient has none; ``mask_key`` (N,) float32 marks the
    images present, ``slot_key`` (N,) int64 gives each slot's value (``slot_values``). The stacked
    keys are removed from the item."""

    def __init__(self, keys: KeysCollection, mask_key: str, slot_key: str | None = None,
                 slot_values: Sequence[int] | None = None, image_key: str = "image"):
        super().__init__(keys, allow_missing_keys=True)
        self.mask_key, self.slot_key, self.image_key = mask_key, slot_key, image_key
        self.slot_values = None if slot_values is None else np.asarray(slot_values, dtype=np.int64)
        if self.slot_values is not None and len(self.slot_values) != len(self.keys):
            raise ValueError(f"{len(self.keys)} keys but {len(self.slot_values)} slot values")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        present = [k in d for k in self.keys]
        if not any(present):
            raise ValueError(f"patient {d.get('id', '?')}: none of {', '.join(map(str, self.keys))}")
        first = torch.as_tensor(next(d[k] for k in self.keys if k in d))
        images = []
        for key in self.keys:
            image = torch.as_tensor(d.pop(key)) if key in d else torch.zeros_like(first)
            if image.shape != first.shape or image.shape[0] != 1:
                raise ValueError(f"patient {d.get('id', '?')}: {key} has shape {tuple(image.shape)}, "
                                 f"expected one channel of {tuple(first.shape[1:])}")
            images.append(image[0])
        d[self.image_key] = torch.stack(images).float()
        d[self.mask_key] = np.asarray(present, dtype=np.float32)
        if self.slot_key is not None:
            d[self.slot_key] = self.slot_values.copy()
        return d


class RandVisitSubsetd(RandomizableTransform, MapTransform):
    """Keep a random non-empty subset of a patient's available images (the MRP training loader:
    "random combinations of available data per phase of NAT"), set the mask of the others to 0
    and zero their images (``image_key`` (N, ...)). A new draw on every call, so a patient is seen
    with other visits in each epoch.

    Without ``phase_key``: a uniform draw among the 2^n - 1 non-empty subsets of the n images
    ``mask_key`` marks present. With ``phase_key`` (each slot's phase index, pre 0 / mid 1 / post 2):
    first a phase, uniformly among those by which the patient has an image, then a uniform
    non-empty subset of the images acquired by then, so that each phase's data (T0 alone before
    treatment) is drawn as often as the others."""

    def __init__(self, mask_key: str = "visit_mask", image_key: str = "image", prob: float = 1.0,
                 phase_key: str | None = None):
        MapTransform.__init__(self, [mask_key, image_key])
        RandomizableTransform.__init__(self, prob)
        self.mask_key, self.image_key, self.phase_key = mask_key, image_key, phase_key
        self._subset: np.ndarray | None = None

    def randomize(self, mask: np.ndarray, phases: np.ndarray | None = None) -> None:
        super().randomize(None)
        present = np.asarray(mask) > 0
        if not present.any():
            raise ValueError("a patient has no available image")
        if phases is not None:
            phases = np.asarray(phases)
            reached = sorted({int(p) for p in phases[present]})  # the patient's phases with an image
            # a phase's data: every image acquired by then (an earlier phase's images included)
            present &= phases <= reached[self.R.randint(len(reached))]
        available = np.flatnonzero(present)
        code = self.R.randint(1, 2 ** available.size)  # 1 .. 2^n - 1: never the empty subset
        keep = available[[(code >> bit) & 1 == 1 for bit in range(available.size)]]
        self._subset = np.zeros(len(mask), dtype=bool)
        self._subset[keep] = True

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        mask = np.asarray(d[self.mask_key], dtype=np.float32)
        self.randomize(mask, None if self.phase_key is None else d[self.phase_key])
        if not self._do_transform:
            return d
        d[self.mask_key] = (mask * self._subset).astype(np.float32)
        image = torch.as_tensor(d[self.image_key]).clone()
        image[torch.as_tensor(~self._subset)] = 0
        d[self.image_key] = image
        return d


def _channel(image, index: int):
    return image[index:index + 1]


def _slot_axis(image):
    """(N, *spatial) -> (N, 1, *spatial): one channel per visit or view, as the networks take it."""
    return torch.as_tensor(image).unsqueeze(1)


def phase_indices(visits: Sequence[str], visit_phases: Mapping[str, str]) -> list[int]:
    """The time-embedding index of each visit: pre 0, mid 1, post 2 (``networks.PHASES``)."""
    missing = [v for v in visits if visit_phases.get(v) not in PHASES]
    if missing:
        raise ValueError(f"visit(s) {', '.join(missing)} have no phase among {', '.join(PHASES)} in visit_phases "
                         f"{dict(visit_phases)}")
    return [PHASES.index(visit_phases[v]) for v in visits]


def mri_transforms(visits: Sequence[str], visit_phases: Mapping[str, str], channel_index: int,
                   spatial_size: Sequence[int] | None = None, scale: float = MR_SCALE) -> list:
    """Deterministic MRI loading: of each visit the patient has, channel ``channel_index`` (the
    subtraction image), in RAS, optionally resampled to ``spatial_size`` by area averaging, divided
    by ``scale``; then ``StackSlotsd`` into ``image`` (V, H, W, D), ``visit_mask``, ``phase``."""
    visits = list(visits)
    resize = [Resized(keys=visits, spatial_size=list(spatial_size), mode="area", allow_missing_keys=True)] \
        if spatial_size else []
    return [
        LoadImaged(keys=visits, ensure_channel_first=True, image_only=True, allow_missing_keys=True),
        Orientationd(keys=visits, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")), allow_missing_keys=True),
        Lambdad(keys=visits, func=partial(_channel, index=int(channel_index)), allow_missing_keys=True),
        *resize,
        NormalizeIntensityd(keys=visits, subtrahend=0.0, divisor=float(scale), allow_missing_keys=True),
        StackSlotsd(keys=visits, mask_key="visit_mask", slot_key="phase",
                    slot_values=phase_indices(visits, visit_phases)),
    ]


def mammogram_transforms(size: Sequence[int] | None = None) -> list:
    """Deterministic mammogram loading: each view the patient has (2-D, [0, 1]), optionally resized
    to ``size`` (rows, columns) by area averaging; then ``StackSlotsd`` into ``image`` (4, H, W)
    in the order L_CC, L_MLO, R_CC, R_MLO and ``view_mask``."""
    keys = [MG_PREFIX + v for v in VIEWS]
    resize = [Resized(keys=keys, spatial_size=list(size), mode="area", allow_missing_keys=True)] if size else []
    return [
        LoadImaged(keys=keys, ensure_channel_first=True, image_only=True, allow_missing_keys=True),
        *resize,
        StackSlotsd(keys=keys, mask_key="view_mask"),
    ]


def load_transforms(model: str, visits: Sequence[str] = (), visit_phases: Mapping[str, str] | None = None,
                    channel_index: int = 0, spatial_size: Sequence[int] | None = None,
                    mg_size: Sequence[int] | None = None) -> list:
    """The deterministic transforms of ``model`` (none for ``rhpc``: its items are ready)."""
    if check_model(model) == "imr":
        return mri_transforms(visits, visit_phases or {}, channel_index, spatial_size)
    if model == "img":
        return mammogram_transforms(mg_size)
    return []


def final_transforms(model: str) -> list:
    """Last transforms: the per-visit (per-view) channel axis of ``image`` and float32 tensors."""
    if check_model(model) == "rhpc":
        return []
    return [Lambdad(keys="image", func=_slot_axis), EnsureTyped(keys="image", dtype=torch.float32, track_meta=False)]
