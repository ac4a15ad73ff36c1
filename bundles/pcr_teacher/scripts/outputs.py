"""Ignite handlers writing per-patient CSVs (identical in each pCR bundle; a test keeps them in step).

Files are written under a temporary name and renamed, so an interrupted run leaves no half file.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events


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


def _write_json(data: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


class _PerPatientWriter:
    """Collects one row per patient from ``engine.state`` and writes them when the run completes."""

    def __init__(self, path: str):
        self.path = path
        self.ids: list[str] = []
        self.rows: list[np.ndarray] = []
        self.labels: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.ids, self.rows, self.labels = [], [], []

    def _collect(self, engine: Engine) -> None:
        batch, pred = engine.state.batch, engine.state.output["pred"]  # evaluators run with decollate=False
        self.ids.extend(str(i) for i in batch["id"])
        self.rows.extend(self.values(pred.detach().float().cpu()))
        if isinstance(batch.get("label"), torch.Tensor):
            self.labels.extend(batch["label"].reshape(len(batch["id"]), -1)[:, 0].tolist())

    def values(self, pred: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def _write(self, engine: Engine) -> None:
        raise NotImplementedError


class PredictionWriter(_PerPatientWriter):
    """CSV ``id, probability`` (+ ``label`` when the data has labels); channel 0 of ``pred`` is
    the pCR logit."""

    def values(self, pred: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(pred.reshape(pred.shape[0], -1)[:, 0]).numpy()

    def _write(self, engine: Engine) -> None:
        frame = pd.DataFrame({"id": self.ids, "probability": self.rows})
        if len(self.labels) == len(self.ids):
            frame["label"] = np.asarray(self.labels).astype(int)
        atomic_write(self.path, lambda tmp: frame.to_csv(tmp, index=False))


class RepresentationWriter(_PerPatientWriter):
    """CSV ``id, f0 .. f{dim-1}`` of the representations in ``pred``, and a JSON sidecar
    (``<path>.json``) recording the cohort and folds the model was trained on."""

    def __init__(self, path: str, provenance: dict):
        super().__init__(path)
        self.provenance = provenance

    def values(self, pred: torch.Tensor) -> np.ndarray:
        return pred.reshape(pred.shape[0], -1).numpy()

    def _write(self, engine: Engine) -> None:
        rows = np.stack(self.rows)
        frame = pd.DataFrame(rows, columns=[f"f{i}" for i in range(rows.shape[1])])
        frame.insert(0, "id", self.ids)
        sidecar = dict(self.provenance, dim=int(rows.shape[1]), patients=len(self.ids))
        atomic_write(self.path + ".json", lambda tmp: _write_json(sidecar, tmp))
        atomic_write(self.path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
