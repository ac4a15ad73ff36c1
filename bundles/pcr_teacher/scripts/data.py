"""Prepared-cohort access for the pCR bundles: datalist, fold selection, clinical encoding.

This file is identical in every pCR bundle (a bundle must run when copied alone); a test keeps
the copies in step.

The clinical vector follows Table 1 of Jing & Wang: 12 multi-hot agents, age, one-hot race and
ethnicity (20 "clinical" values), then HR, HER2, MammaPrint, DNA-repair deficiency, immune
activation coded positive 0 / negative 1 and one-hot BluePrint (8 "subtype" values). Age stays
raw here; the network z-scores it with training-fold statistics kept in its state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from monai.transforms import (
    ConcatItemsd,
    DeleteItemsd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Resized,
)

AGENTS = (
    "agent_abt888", "agent_amg386", "agent_carboplatin", "agent_ganetespib", "agent_ganitumab",
    "agent_mk2206", "agent_neratinib", "agent_paclitaxel", "agent_pembrolizumab",
    "agent_pertuzumab", "agent_tdm1", "agent_trastuzumab",
)
CATEGORIES = {
    "race": (
        "American Indian or Alaska Native", "Asian", "Black or African American",
        "Native Hawaiian or Other Pacific Islander", "White",
    ),
    "ethnicity": ("Hispanic or Latino", "Not Hispanic or Latino"),
    "BluePrint": ("Basal", "HER2", "Luminal"),
}
SUBTYPE_BINARY = ("HR", "HER2", "MammaPrint", "DRD", "immune")
AGE_INDEX = len(AGENTS)
CLINICAL_SIZE = len(AGENTS) + 1 + len(CATEGORIES["race"]) + len(CATEGORIES["ethnicity"])
SUBTYPE_SIZE = len(SUBTYPE_BINARY) + len(CATEGORIES["BluePrint"])
# Percent enhancement is divided by 100 (PE 70 % -> 0.7) so that the paper's noise sigma of 0.3
# is on the scale of the signal; the FTV mask stays 0/1.
CHANNEL_DIVISORS = (100.0, 100.0, 1.0, 1.0)


def _field(patient: str, clinical: dict, name: str):
    value = clinical.get(name)
    if value is None:
        raise ValueError(f"patient {patient}: clinical field '{name}' is missing")
    return value


def _binary(patient: str, clinical: dict, name: str) -> int:
    value = _field(patient, clinical, name)
    if value not in (0, 1):
        raise ValueError(f"patient {patient}: clinical field '{name}' must be 0 or 1, got {value!r}")
    return int(value)


def _one_hot(patient: str, clinical: dict, name: str) -> list[float]:
    value = _field(patient, clinical, name)
    if value not in CATEGORIES[name]:
        raise ValueError(f"patient {patient}: clinical field '{name}' has unknown value {value!r}")
    return [float(value == c) for c in CATEGORIES[name]]


def encode_clinical(patient: str, clinical: dict) -> np.ndarray:
    """The 28-value clinical + subtype vector of one patient (age raw)."""
    vector = [float(_binary(patient, clinical, a)) for a in AGENTS]
    vector.append(float(_field(patient, clinical, "age")))
    vector += _one_hot(patient, clinical, "race") + _one_hot(patient, clinical, "ethnicity")
    vector += [1.0 - _binary(patient, clinical, f) for f in SUBTYPE_BINARY]  # Table 1: positive 0
    vector += _one_hot(patient, clinical, "BluePrint")
    return np.asarray(vector, dtype=np.float32)


def load_datalist(dataset_dir: str) -> list[dict]:
    """Entries of ``dataset_dir/datalist.json`` with image paths made absolute."""
    path = os.path.join(dataset_dir, "datalist.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (dataset_dir must be a prepared cohort)")
    with open(path) as f:
        datalist = json.load(f)
    entries = []
    for entry in datalist["training"]:
        entry = dict(entry)
        for visit in datalist.get("visits", ()):
            if visit in entry:
                entry[visit] = os.path.join(dataset_dir, entry[visit])
        entries.append(entry)
    return entries


def training_folds(entries: list[dict], val_fold: int, test_fold: int) -> list[int]:
    """Every fold of the datalist except the validation and test folds."""
    folds = sorted({e["fold"] for e in entries} - {val_fold, test_fold})
    if val_fold == test_fold or not folds:
        raise ValueError(f"val_fold {val_fold} and test_fold {test_fold} leave no training fold")
    return folds


def fold_digest(entries: list[dict]) -> str:
    """Fingerprint of the patient-to-fold assignment (to match teacher outputs to a cohort)."""
    pairs = sorted(f"{e['id']}:{e.get('fold')}" for e in entries)
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]


def select(entries: list[dict], visits: Sequence[str], folds: Sequence[int] | None = None) -> list[dict]:
    """Model items of the patients in ``folds`` (all when None): id, visit paths, clinical, label."""
    items = []
    for entry in entries:
        if folds is not None and entry.get("fold") not in folds:
            continue
        missing = [v for v in visits if not entry.get(v)]
        if missing:
            raise ValueError(f"patient {entry['id']}: no image for visit(s) {', '.join(missing)}")
        item = {"id": entry["id"], "clinical": encode_clinical(entry["id"], entry.get("clinical") or {})}
        item.update({v: entry[v] for v in visits})
        if entry.get("label") is not None:
            item["label"] = np.asarray([entry["label"]], dtype=np.float32)
        items.append(item)
    if not items:
        raise ValueError(f"no patient in fold(s) {folds}")
    return items


def age_statistics(items: list[dict]) -> tuple[float, float]:
    """Mean and standard deviation of age over ``items`` (the training patients)."""
    ages = np.array([item["clinical"][AGE_INDEX] for item in items], dtype=np.float64)
    return float(ages.mean()), float(max(ages.std(), 1e-6))


def positive_class_weight(entries: list[dict], folds: Sequence[int], device=None):
    """Weight of the pCR class in the validation BCE: non-pCR / pCR patients of the training
    folds, so that validation weighs the classes as the class-balanced sampler trains them."""
    labels = [e["label"] for e in entries if e.get("fold") in folds]
    positives = sum(labels)
    if not 0 < positives < len(labels):
        raise ValueError(f"training folds {list(folds)} hold one class only")
    return torch.tensor([(len(labels) - positives) / positives], device=device)


def class_balanced_weights(items: list[dict]) -> list[float]:
    """Sampling weight 1 / (patients of the same class), as in Jing & Wang section 2.4."""
    labels = [float(item["label"][0]) for item in items]
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"training patients are all of one class (pCR = {labels[0]:g})")
    return [1.0 / counts[label] for label in labels]


def _first_channels(image, count: int):
    return image[:count]


def visit_transforms(visits: Sequence[str], channels: int, spatial_size: Sequence[int] | None = None) -> list:
    """Deterministic loading: per visit the first ``channels`` channels, scaled, optionally
    resampled to ``spatial_size`` by area averaging (the FTV mask becomes the tumour fraction of
    each voxel, so the tumour volume is kept), then all visits concatenated in order into
    ``image`` (channels ``visit * channels + c``)."""
    visits = list(visits)
    resize = [Resized(keys=visits, spatial_size=list(spatial_size), mode="area")] if spatial_size else []
    return [
        LoadImaged(keys=visits, ensure_channel_first=True, image_only=True),
        Orientationd(keys=visits, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Lambdad(keys=visits, func=partial(_first_channels, count=channels)),
        *resize,
        NormalizeIntensityd(
            keys=visits, subtrahend=[0.0] * channels, divisor=list(CHANNEL_DIVISORS[:channels]), channel_wise=True
        ),
        ConcatItemsd(keys=visits, name="image", dim=0),
        DeleteItemsd(keys=visits),
        EnsureTyped(keys="image", dtype=np.float32, track_meta=False),
    ]
