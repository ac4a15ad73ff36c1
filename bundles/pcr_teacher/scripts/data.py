"""Prepared-cohort access for the pCR bundles: datalist, fold selection, clinical encoding.

This file is identical in every pCR bundle (a bundle must run when copied alone); a test keeps
the copies in step.

The clinical vector is built from the fields the prepared cohort records (``ClinicalEncoding``);
on this project's synthetic cohort it is Table 1 of Jing & Wang: 12 multi-hot agents, age, one-hot
race and ethnicity (20 "clinical" values), then HR, HER2, MammaPrint, DNA-repair deficiency, immune
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

# Percent enhancement is divided by 100 (PE 70 % -> 0.7) so that the paper's noise sigma of 0.3
# is on the scale of the signal; the FTV mask and SER stay as they are; the subtraction image (in
# the scanner's signal units, tens to hundreds) is divided by 100 like PE.
CHANNEL_DIVISORS = (100.0, 100.0, 1.0, 1.0, 100.0)
WIDTH = {"number": 1, "binary": 1}  # category and multi_hot: one value per level
GROUPS = ("clinical", "subtype")  # Table 1 of Jing & Wang, in this order


class ClinicalEncoding:
    """The clinical + subtype vector of a cohort, built from the fields its ``datalist.json``
    records (``clinical_fields``: name, group, type, levels), clinical fields first; fields of
    other groups (``rhpc``, for the MRP fusion bundle) are not part of it.

    Multi-hot and one-hot fields give one value per level, binary fields are coded positive 0 /
    negative 1 (Table 1 of Jing & Wang), age stays raw (the network z-scores it). Fields the
    cohort lacks are not in the vector; unknown values are errors naming the patient.
    """

    def __init__(self, fields: Sequence[dict]):
        self.fields = [dict(f) for f in fields if f.get("group") in GROUPS]
        groups = [f["group"] for f in self.fields]
        if groups != sorted(groups, key=GROUPS.index):
            raise ValueError(f"clinical fields must be grouped clinical, then subtype: {groups}")
        widths = [WIDTH.get(f["type"]) or len(f.get("levels") or ()) for f in self.fields]
        if not all(widths):
            raise ValueError(f"clinical fields without levels: {[f['name'] for f, w in zip(self.fields, widths) if not w]}")
        names = [f["name"] for f in self.fields]
        if "age" not in names or self.fields[names.index("age")]["type"] != "number":
            raise ValueError("clinical fields need 'age' (number): the network z-scores it")
        self.age_index = sum(widths[:names.index("age")])
        self.clinical_size = sum(w for w, g in zip(widths, groups) if g == "clinical")
        self.subtype_size = sum(widths) - self.clinical_size

    def encode(self, patient: str, clinical: dict) -> np.ndarray:
        vector = []
        for f in self.fields:
            name, value = f["name"], clinical.get(f["name"])
            if value is None:
                raise ValueError(f"patient {patient}: clinical field '{name}' is missing")
            if f["type"] == "number":
                vector.append(float(value))
            elif f["type"] == "binary":
                if value not in (0, 1):
                    raise ValueError(f"patient {patient}: clinical field '{name}' must be 0 or 1, got {value!r}")
                vector.append(1.0 - float(value))
            else:
                chosen = set(value) if f["type"] == "multi_hot" else {value}
                unknown = chosen - set(f["levels"])
                if unknown:
                    raise ValueError(f"patient {patient}: clinical field '{name}' has unknown value "
                                     f"{sorted(unknown)[0]!r}")
                vector += [float(level in chosen) for level in f["levels"]]
        return np.asarray(vector, dtype=np.float32)


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


def matching_fields(model_fields: list[dict], dataset_dir: str) -> list[dict]:
    """``model_fields`` when the cohort at ``dataset_dir`` records the same clinical and subtype
    fields, or when there is no cohort there (exporting or checking a network reads none)."""
    if not os.path.isfile(os.path.join(dataset_dir, "datalist.json")):
        return model_fields
    # only the fields this bundle encodes count (the MRP model's rhpc fields may differ)
    fields, model = ClinicalEncoding(cohort_fields(dataset_dir)).fields, ClinicalEncoding(model_fields).fields
    if fields != model:
        differ = sorted({f["name"] for f in fields} ^ {f["name"] for f in model}) or sorted(
            f["name"] for f in fields if f not in model)
        raise ValueError(f"the model's clinical encoding does not match the cohort in {dataset_dir} "
                         f"(fields or levels differ: {', '.join(differ)}); prepare the cohort with the "
                         "model's schema, or train a model on this cohort")
    return model_fields


def load_datalist(dataset_dir: str) -> list[dict]:
    """Entries of ``dataset_dir/datalist.json`` with image paths made absolute."""
    datalist = _datalist(dataset_dir)
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


def select(entries: list[dict], visits: Sequence[str], folds: Sequence[int] | None,
           clinical_fields: Sequence[dict]) -> list[dict]:
    """Model items of the patients in ``folds`` (all when None): id, visit paths, clinical vector
    (``ClinicalEncoding`` of ``clinical_fields``), label."""
    encoding = ClinicalEncoding(clinical_fields)
    items = []
    for entry in entries:
        if folds is not None and entry.get("fold") not in folds:
            continue
        missing = [v for v in visits if not entry.get(v)]
        if missing:
            raise ValueError(f"patient {entry['id']}: no image for visit(s) {', '.join(missing)}")
        item = {"id": entry["id"], "clinical": encoding.encode(entry["id"], entry.get("clinical") or {})}
        item.update({v: entry[v] for v in visits})
        if entry.get("label") is not None:
            item["label"] = np.asarray([entry["label"]], dtype=np.float32)
        items.append(item)
    if not items:
        raise ValueError(f"no patient in fold(s) {folds}")
    return items


def age_statistics(items: list[dict], clinical_fields: Sequence[dict]) -> tuple[float, float]:
    """Mean and standard deviation of age over ``items`` (the training patients)."""
    index = ClinicalEncoding(clinical_fields).age_index
    ages = np.array([item["clinical"][index] for item in items], dtype=np.float64)
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
