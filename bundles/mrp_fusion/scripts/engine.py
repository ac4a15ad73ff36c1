"""How batches reach the three MRP networks in MONAI's ignite engines: the inputs of each model
(``PrepareBatchInputs``), the training forward that also returns the knowledge predictor's outputs
(``OutputsInferer``) and the training loss on them (``TrainingLoss``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from torch import nn

from .data import check_model
from .losses import KnowledgeLoss

# the forward arguments of each network, in order; the first one is the engine's `image`
INPUTS = {
    "rhpc": ("rhpc_index", "age"),
    "imr": ("image", "visit_mask", "phase", "rhpc_index", "age"),
    "img": ("image", "view_mask", "rhpc_index", "age"),
}


class PrepareBatchInputs(PrepareBatch):
    """The forward arguments of ``model`` from a batch: the first as the engine's input, the others
    as extra positional arguments (as ``PrepareBatchExtraInput`` does); the target is ``label``, or
    with several ``targets`` a dict of them (the training loss needs the rhpc targets and age).
    A batch without labels (inference) gives the target None."""

    def __init__(self, model: str, targets: str | Sequence[str] = "label"):
        self.inputs = INPUTS[check_model(model)]
        self.targets = targets

    def __call__(self, batchdata: dict[str, Any], device: str | torch.device | None = None,
                 non_blocking: bool = False, **kwargs: Any) -> tuple[torch.Tensor, Any, tuple, dict]:
        def get(key: str):
            value = batchdata.get(key)
            if isinstance(value, torch.Tensor):
                return value.to(device=device, non_blocking=non_blocking, **kwargs)
            return value

        inputs = [get(k) for k in self.inputs]
        missing = [k for k, v in zip(self.inputs, inputs) if v is None]
        if missing:
            raise KeyError(f"the batch lacks the input(s) {', '.join(missing)}")
        if isinstance(self.targets, str):
            target = get(self.targets)
        else:
            target = {k: get(k) for k in self.targets}
        return inputs[0], target, tuple(inputs[1:]), {}


class OutputsInferer(Inferer):
    """Training forward: ``network.outputs(...)`` (the pCR logit ``pred`` and the knowledge
    predictor's outputs) where the network has it, else ``{"pred": network(...)}`` (the rhpc model)."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if hasattr(network, "outputs"):
            return network.outputs(inputs, *args, **kwargs)
        return {"pred": network(inputs, *args, **kwargs)}


class TrainingLoss(nn.Module):
    """``KnowledgeLoss`` on the training engine's prediction dict and target dict (``label``,
    ``rhpc_target``, ``age``): BCE of ``pred`` plus the knowledge terms where the network has them."""

    def __init__(self, clinical_fields: Sequence[dict], age_stats: Sequence[float] = (0.0, 1.0),
                 weights: Mapping[str, float] | None = None):
        super().__init__()
        self.loss = KnowledgeLoss(clinical_fields, age_stats, weights)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss(outputs, targets["label"], targets["rhpc_target"], targets["age"])
