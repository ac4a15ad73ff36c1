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
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from .data import write_exclusions
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
    models_used`` (``imr+img``, ``imr``, ``img`` or ``rhpc``; + ``label`` when every patient has one).

    A patient of ``patients`` (id -> fold) that neither image model could see gets the rhpc model's
    probability from ``rhpc`` (``fallback.RhpcFallback``) when its checkpoint exists; otherwise the
    patient is logged and listed in ``excluded`` (``id, fold, reason``; ``visits``: the MRI visits
    inference looked for, named in the reason)."""

    def __init__(self, path: str, mr: PredictionWriter, mg: PredictionWriter, weight: float,
                 patients: Mapping[str, int | None] | None = None, excluded: str | None = None, rhpc=None,
                 visits: Sequence[str] = ()):
        self.path, self.mr, self.mg, self.weight = path, mr, mg, float(weight)
        self.patients, self.excluded, self.rhpc, self.visits = patients, excluded, rhpc, list(visits)

    def write(self) -> str:
        ids, p_mr, p_mg = _combined(self.mr, self.mg)
        used = ["imr+img" if not (np.isnan(a) or np.isnan(b)) else "imr" if np.isnan(b) else "img"
                for a, b in zip(p_mr, p_mg)]
        rows = dict(zip(ids, zip(mrp_probability(p_mg, p_mr, self.weight), used)))
        fallback = self.rhpc.writer if self.rhpc is not None else PredictionWriter()
        rows.update((i, (p, "rhpc")) for i, p in fallback.probabilities.items())
        if not rows:
            raise ValueError("no patient has an input of the MRI or the mammography model"
                             + ("" if self.rhpc is not None and self.rhpc.available else
                                ", and there is no rhpc model to fall back on"))
        labels = {**self.mr.labels, **self.mg.labels, **fallback.labels}
        labelled = all(i in labels for i in rows)
        write_csv(self.path, ["id", "probability", "models_used"] + ["label"] * labelled,
                  [[i, f"{p:.6g}", u] + ([labels[i]] if labelled else []) for i, (p, u) in sorted(rows.items())])
        if self.patients is not None:
            self._exclude({str(i): fold for i, fold in self.patients.items() if str(i) not in rows})
        log.info("MRP predictions of %d patients (w_img = %.2f; rhpc model alone: %d) written to %s", len(rows),
                 self.weight, len(fallback.probabilities), self.path)
        return self.path

    def _exclude(self, missing: dict[str, int | None]) -> None:
        reason = f"no MRI visit among {', '.join(self.visits)} and no mammogram" if self.visits else \
            "no MRI visit and no mammogram"
        if self.rhpc is not None and not self.rhpc.available:
            reason += f"; no rhpc model to fall back on ({self.rhpc.ckpt} not found)"
        for i in missing:
            log.warning("patient %s: %s, no MRP prediction", i, reason)
        if self.excluded:
            write_exclusions(self.excluded, [{"id": i, "fold": fold, "reason": reason} for i, fold in missing.items()])


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
