"""Stage 1 of Jing & Wang: convolutional LSTM over T0, T1, T2 with clinical and subtype data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from .layers import ClinicalInput, VisitEncoder


class PCRTeacher(nn.Module):
    """Shared 3D ResNet18 per visit -> LSTM over the visits -> image feature; concatenated with
    the clinical and subtype vectors (dropout on each of the three) -> pCR logit (B, 1).

    The LSTM takes any number of visits, so a model trained on T0-T2 can be tested on T0-T1
    (Conventional #2). ``encoder`` alone gives the per-visit representation that stage 2 learns
    to predict.
    """

    def __init__(self, clinical_fields: Sequence[dict], channels_per_visit: int = 3, widen_factor: float = 1.0,
                 lstm_layers: int = 2, dropout: float = 0.5, use_clinical: bool = True, use_subtype: bool = True,
                 age_stats: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.encoder = VisitEncoder(channels_per_visit, widen_factor)
        dim = self.encoder.dim
        self.lstm = nn.LSTM(dim, dim, num_layers=lstm_layers, batch_first=True)
        self.clinical = ClinicalInput(clinical_fields, use_clinical, use_subtype, age_stats)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim + self.clinical.out_features, 1)

    def forward(self, image: torch.Tensor, clinical: Optional[torch.Tensor] = None) -> torch.Tensor:
        sequence, _ = self.lstm(self.encoder(image))
        parts = [sequence[:, -1]] + self.clinical(clinical, image.shape[0], image.device)
        return self.head(torch.cat([self.dropout(p) for p in parts], dim=1))
