"""Stage-2 training pieces: teacher targets, the dual-task loss, and batch preparation."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import torch
from monai.engines import PrepareBatchExtraInput
from torch import nn

from .data import fold_digest


def attach_teacher_targets(items: list[dict], path: str, entries: list[dict], val_fold: int,
                           test_fold: int, scale: float | None = None) -> list[dict]:
    """Add each training patient's teacher T2 representation as ``teacher``, divided by ``scale``,
    by default the representations' root mean square over ``items`` (a federated job gives the
    one pooled over every site's training patients).

    Refuses a representation file whose teacher saw this run's test or validation fold (a
    held-out patient must never shape a teacher target) or that comes from another cohort.
    """
    sidecar_path = path + ".json"
    if not (os.path.isfile(path) and os.path.isfile(sidecar_path)):
        raise FileNotFoundError(f"{path}: teacher representations (and {sidecar_path}) not found; "
                                "run the pcr_teacher bundle's export.json first")
    with open(sidecar_path) as f:
        sidecar = json.load(f)
    if sidecar.get("fold_digest") != fold_digest(entries):
        raise ValueError(f"{path}: teacher was trained on a different cohort or fold assignment")
    seen = set(sidecar["train_folds"]) | {sidecar["val_fold"]}
    if test_fold in seen:
        raise ValueError(f"{path}: teacher trained or validated on fold {test_fold}, this run's test fold")
    if val_fold in sidecar["train_folds"]:
        raise ValueError(f"{path}: teacher trained on fold {val_fold}, this run's validation fold")
    table = pd.read_csv(path, dtype={"id": str}).set_index("id")
    missing = [item["id"] for item in items if item["id"] not in table.index]
    if missing:
        raise ValueError(f"patient {missing[0]}: no teacher representation in {path}")
    targets = table.loc[[item["id"] for item in items]].to_numpy(dtype=np.float32)
    # one scale for all dimensions (root mean square over these training patients), so that
    # mse_weight 1 weighs the two tasks alike whatever the teacher's feature scale
    if scale is None:
        scale = float(np.sqrt(np.mean(targets**2)))
    targets = targets / max(scale, 1e-6)
    return [dict(item, teacher=target) for item, target in zip(items, targets)]


class DualTaskLoss(nn.Module):
    """BCE on the pCR logit + ``weight`` x MSE between predicted and teacher T2 representations.

    ``pred`` and ``target`` are (B, 1 + dim): channel 0 logit / label, the rest representations.
    """

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight
        self.bce = nn.BCEWithLogitsLoss()
        self.mse = nn.MSELoss()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ: "
                             "teacher representation size must match the network's")
        return self.bce(pred[:, :1], target[:, :1]) + self.weight * self.mse(pred[:, 1:], target[:, 1:])


class PrepareBatchDualTask(PrepareBatchExtraInput):
    """Clinical vector as the network's extra input; target = [label, teacher representation]."""

    def __init__(self, extra_keys="clinical", target_key: str = "teacher"):
        super().__init__(extra_keys)
        self.target_key = target_key

    def __call__(self, batchdata, device=None, non_blocking=False, **kwargs):
        image, label, args, kwargs_ = super().__call__(batchdata, device, non_blocking, **kwargs)
        teacher = batchdata[self.target_key].to(device=device, non_blocking=non_blocking)
        return image, torch.cat([label, teacher], dim=1), args, kwargs_
