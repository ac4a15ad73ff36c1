"""Network pieces shared by the pCR bundles (identical in each bundle; a test keeps them in step)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
from monai.networks.nets import resnet18
from torch import nn

from .data import ClinicalEncoding


class VisitEncoder(nn.Module):
    """MONAI's 3D ResNet18 applied to each visit of a channel-stacked image.

    ``image`` is (B, V * channels_per_visit, H, W, D); the result is (B, V, dim), one
    representation per visit from one set of weights. ``widen_factor`` 1 gives the paper's
    widths (dim 512); the CPU profile uses narrower layers.
    """

    def __init__(self, channels_per_visit: int = 3, widen_factor: float = 1.0):
        super().__init__()
        self.channels_per_visit = channels_per_visit
        self.resnet = resnet18(spatial_dims=3, n_input_channels=channels_per_visit, feed_forward=False,
                               widen_factor=widen_factor)
        self.dim = int(512 * widen_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch = image.shape[0]
        visits = image.shape[1] // self.channels_per_visit
        stacked = image.reshape([batch * visits, self.channels_per_visit] + list(image.shape[2:]))
        return self.resnet(stacked).reshape(batch, visits, self.dim)


class ClinicalInput(nn.Module):
    """Selects the clinical and/or subtype part of the encoded vector and z-scores age.

    ``clinical_fields`` is the cohort's record of its fields (``data.ClinicalEncoding``); it fixes
    the vector's layout.

    The age mean and standard deviation are buffers: set from the training folds when the
    network is built for training, saved in every checkpoint, and restored at inference.
    Without a clinical tensor (shape checks, export) the selected parts are zeros.
    """

    def __init__(self, clinical_fields: Sequence[dict], use_clinical: bool = True, use_subtype: bool = True,
                 age_stats: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.use_clinical = use_clinical
        self.use_subtype = use_subtype
        self.register_buffer("age_mean", torch.tensor(float(age_stats[0])))
        self.register_buffer("age_std", torch.tensor(float(age_stats[1])))
        encoding = ClinicalEncoding(clinical_fields)
        self.age_index, self.clinical_size, self.subtype_size = (encoding.age_index, encoding.clinical_size,
                                                                 encoding.subtype_size)
        self.width = self.clinical_size + self.subtype_size  # of the encoded vector
        self.sizes = [self.clinical_size] * int(use_clinical) + [self.subtype_size] * int(use_subtype)
        self.out_features = sum(self.sizes)

    def forward(self, clinical: Optional[torch.Tensor], batch: int, device: torch.device) -> List[torch.Tensor]:
        if clinical is None:
            return [torch.zeros(batch, size, device=device) for size in self.sizes]
        i = self.age_index
        age = (clinical[:, i:i + 1] - self.age_mean) / self.age_std
        clinical = torch.cat([clinical[:, :i], age, clinical[:, i + 1:]], dim=1)
        parts: List[torch.Tensor] = []
        if self.use_clinical:
            parts.append(clinical[:, :self.clinical_size])
        if self.use_subtype:
            parts.append(clinical[:, self.clinical_size:self.clinical_size + self.subtype_size])
        return parts


def parameter_groups(network: nn.Module, learning_rate: float, head_lr_factor: float = 1.0) -> list[dict]:
    """Optimiser groups: the final linear layer (``head``) at ``learning_rate * head_lr_factor``,
    everything else at ``learning_rate``.

    Adam moves a weight by about the learning rate per step whatever its gradient, so a short run
    cannot grow the head's weights on the clinical vector to the size a logistic regression gives
    them (0.5-1 per standardised input); a faster head lets the few optimiser steps of the CPU
    profile reach them.
    """
    head = [p for n, p in network.named_parameters() if n.startswith("head.")]
    if not head:
        raise ValueError(f"{type(network).__name__} has no 'head' layer")
    rest = [p for n, p in network.named_parameters() if not n.startswith("head.")]
    return [{"params": rest, "lr": learning_rate}, {"params": head, "lr": learning_rate * head_lr_factor}]
