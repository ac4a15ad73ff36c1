"""The rhpc model as the MRP system's fallback at inference: a patient with neither an MRI visit
among the inference visits nor a mammogram gets the tabular rhpc model's probability when its
checkpoint exists (``models_used`` rhpc in ``MRPWriter``); without it the patient is excluded with
the reason, never skipped silently.

Built in code rather than in ``inference.json`` because the config resolves every reference it
names, so an rhpc evaluator there would need the checkpoint even when it is absent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import CheckpointLoader

from .checkpoint import network_from_settings, saved_settings
from .data import matching_fields, select
from .engine import PrepareBatchInputs
from .outputs import PredictionWriter

log = logging.getLogger(__name__)


class RhpcFallback:
    """Runs the rhpc model at ``ckpt`` on the patients of ``folds`` (all when None) that none of the
    ``covered`` writers (the image models' ``PredictionWriter``) predicted; ``writer`` holds their
    probabilities (written to ``path``). Does nothing when the checkpoint does not exist."""

    def __init__(self, ckpt: str, entries: list[dict], folds: Sequence[int] | None, dataset_dir: str,
                 covered: Sequence[PredictionWriter], device: str | torch.device = "cpu", batch_size: int = 16,
                 amp: bool = False, path: str | None = None):
        self.ckpt, self.entries, self.folds, self.dataset_dir = ckpt, entries, folds, dataset_dir
        self.covered, self.device, self.batch_size, self.amp = list(covered), device, batch_size, amp
        self.writer = PredictionWriter(path)

    @property
    def available(self) -> bool:
        return os.path.isfile(self.ckpt)

    def run(self) -> None:
        if not self.available:
            return
        seen = set().union(*(writer.probabilities for writer in self.covered))
        settings = saved_settings(self.ckpt, "rhpc")
        fields = matching_fields(settings["clinical_fields"], self.dataset_dir)
        items = [item for item in select(self.entries, "rhpc", self.folds, fields) if item["id"] not in seen]
        if not items:
            return
        log.info("%d patient(s) without an MRI visit or a mammogram: predicted by the rhpc model %s",
                 len(items), self.ckpt)
        network = network_from_settings(settings, fields).to(self.device)
        SupervisedEvaluator(
            device=self.device,
            val_data_loader=DataLoader(Dataset(items), batch_size=self.batch_size, shuffle=False),
            network=network,
            prepare_batch=PrepareBatchInputs("rhpc"),
            val_handlers=[CheckpointLoader(load_path=self.ckpt, load_dict={"model": network},
                                           map_location=self.device), self.writer],
            amp=self.amp,
            decollate=False,
        ).run()
