"""Per-patient outputs: the predictions of one model (an ignite handler), the MRP ensemble of the
MRI and mammography models, and the ensemble weight chosen on the validation patients.

Files are written under a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from .ensemble import auroc, ensemble_weight, mrp_probability

log = logging.getLogger(__name__)


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(path: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    atomic_write(path, write)


def write_json(path: str, data: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)

    atomic_write(path, write)


class PredictionWriter:
    """Collects the pCR probability (sigmoid of ``pred``) of every patient an evaluator sees and
    writes ``id, probability`` (+ ``label`` when the data has labels) when the run completes; the
    values stay available as ``probabilities`` and ``labels`` (dicts by id) for the ensemble."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.probabilities: dict[str, float] = {}
        self.labels: dict[str, int] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.probabilities, self.labels = {}, {}

    def _collect(self, engine: Engine) -> None:
        batch, pred = engine.state.batch, engine.state.output["pred"]  # evaluators run with decollate=False
        ids = [str(i) for i in batch["id"]]
        probabilities = torch.sigmoid(pred.detach().float().cpu().reshape(len(ids), -1)[:, 0]).tolist()
        self.probabilities.update(zip(ids, probabilities))
        if isinstance(batch.get("label"), torch.Tensor):
            self.labels.update(zip(ids, batch["label"].reshape(len(ids), -1)[:, 0].int().tolist()))

    def _write(self, engine: Engine) -> None:
        if not self.path:
            return
        labelled = len(self.labels) == len(self.probabilities)
        rows = [[i, f"{p:.6g}"] + ([self.labels[i]] if labelled else []) for i, p in self.probabilities.items()]
        write_csv(self.path, ["id", "probability"] + ["label"] * labelled, rows)


def saved_weight(path: str, infer_visits: Sequence[str] | None = None) -> float:
    """The mammography weight of the MRP ensemble saved by ``configs/ensemble.json``; a warning
    when it was chosen on other MRI visits than ``infer_visits`` (the weight depends on the phase)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no ensemble weight; run configs/ensemble.json (after training the imr "
                                "and img models) to choose it on the validation fold")
    with open(path) as f:
        record = json.load(f)
    weight = record["weight"]
    chosen_on = record.get("infer_visits")
    if infer_visits is not None and chosen_on is not None and list(chosen_on) != list(infer_visits):
        log.warning("the ensemble weight in %s was chosen with the MRI visits %s, inference uses %s; run "
                    "configs/ensemble.json with the same infer_visits for a weight of this phase",
                    path, ", ".join(chosen_on), ", ".join(infer_visits))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{path}: weight {weight} is not within [0, 1]")
    return float(weight)


def _combined(mr: PredictionWriter, mg: PredictionWriter) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = sorted(set(mr.probabilities) | set(mg.probabilities))
    p_mr = np.array([mr.probabilities.get(i, math.nan) for i in ids], dtype=np.float64)
    p_mg = np.array([mg.probabilities.get(i, math.nan) for i in ids], dtype=np.float64)
    return ids, p_mr, p_mg


class MRPWriter:
    """The MRP probability of every patient: ``w * p_img + (1 - w) * p_imr``, or the one model's
    probability where a patient has only MRI or only mammograms; writes ``id, probability,
    models_used`` (``imr+img``, ``imr`` or ``img``; + ``label`` when every patient has one).
    Patients of ``ids`` that neither model could see are logged and listed in ``excluded``."""

    def __init__(self, path: str, mr: PredictionWriter, mg: PredictionWriter, weight: float,
                 ids: Sequence[str] | None = None, excluded: str | None = None):
        self.path, self.mr, self.mg, self.weight = path, mr, mg, float(weight)
        self.ids, self.excluded = ids, excluded

    def write(self) -> str:
        ids, p_mr, p_mg = _combined(self.mr, self.mg)
        if not ids:
            raise ValueError("no patient has an input of the MRI or the mammography model")
        probability = mrp_probability(p_mg, p_mr, self.weight)
        used = ["imr+img" if not (np.isnan(a) or np.isnan(b)) else "imr" if np.isnan(b) else "img"
                for a, b in zip(p_mr, p_mg)]
        labels = {**self.mr.labels, **self.mg.labels}
        labelled = all(i in labels for i in ids)
        rows = [[i, f"{p:.6g}", u] + ([labels[i]] if labelled else []) for i, p, u in zip(ids, probability, used)]
        write_csv(self.path, ["id", "probability", "models_used"] + ["label"] * labelled, rows)
        if self.ids is not None:
            missing = sorted(set(map(str, self.ids)) - set(ids))
            for i in missing:
                log.warning("patient %s: no MRI visit and no mammogram, no MRP prediction", i)
            if self.excluded:
                write_csv(self.excluded, ["id", "reason"], [[i, "no MRI visit and no mammogram"] for i in missing])
        log.info("MRP predictions of %d patients (w_img = %.2f) written to %s", len(ids), self.weight, self.path)
        return self.path


class EnsembleFitter:
    """Chooses the mammography weight ``w`` of the MRP ensemble on the validation patients
    (``ensemble.ensemble_weight``: every validation patient with the probability the ensemble
    would give, single-modality patients with their one model's) and saves it as JSON."""

    def __init__(self, path: str, mr: PredictionWriter, mg: PredictionWriter, provenance: dict | None = None):
        self.path, self.mr, self.mg, self.provenance = path, mr, mg, dict(provenance or {})

    def fit(self) -> float:
        ids, p_mr, p_mg = _combined(self.mr, self.mg)
        labels = {**self.mr.labels, **self.mg.labels}
        unlabelled = [i for i in ids if i not in labels]
        if unlabelled:
            raise ValueError(f"the ensemble weight needs labelled validation patients; {len(unlabelled)} have no label")
        y = np.array([labels[i] for i in ids])
        weight = ensemble_weight(y, p_mg, p_mr)
        both = ~(np.isnan(p_mr) | np.isnan(p_mg))
        record = {**self.provenance, "weight": weight, "patients": len(ids), "patients_with_both": int(both.sum()),
                  "val_auroc": auroc(y, mrp_probability(p_mg, p_mr, weight))}
        write_json(self.path, record)
        log.info("MRP ensemble weight of the mammography model: %.2f (validation AUROC %.3f, %d patients) -> %s",
                 weight, record["val_auroc"], len(ids), self.path)
        return weight
