"""Stage 2 of Jing & Wang: dual-task early-prediction network on T0 and T1 only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from .layers import ClinicalInput, VisitEncoder


class DualTaskNet(nn.Module):
    """Shared 3D ResNet18 on the early visits; a 2-layer ReLU RNN over [f(T0), f(T1)] predicts
    the T2 representation; a 2-layer LSTM over [f(T0), f(T1), predicted f(T2)] gives the image
    feature, concatenated with the clinical and subtype vectors -> pCR logit. No dropout.

    Output (B, 1 + dim): channel 0 the pCR logit, channels 1.. the predicted T2 representation.
    """

    def __init__(self, clinical_fields: Sequence[dict], channels_per_visit: int = 3, widen_factor: float = 1.0,
                 rnn_layers: int = 2, lstm_layers: int = 2, use_clinical: bool = True, use_subtype: bool = True,
                 age_stats: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.encoder = VisitEncoder(channels_per_visit, widen_factor)
        dim = self.encoder.dim
        self.predictor = nn.RNN(dim, dim, num_layers=rnn_layers, nonlinearity="relu", batch_first=True)
        self.lstm = nn.LSTM(dim, dim, num_layers=lstm_layers, batch_first=True)
        self.clinical = ClinicalInput(clinical_fields, use_clinical, use_subtype, age_stats)
        self.head = nn.Linear(dim + self.clinical.out_features, 1)

    def forward(self, image: torch.Tensor, clinical: Optional[torch.Tensor] = None) -> torch.Tensor:
        early = self.encoder(image)
        predicted, _ = self.predictor(early)
        predicted_t2 = predicted[:, -1]
        sequence, _ = self.lstm(torch.cat([early, predicted_t2[:, None]], dim=1))
        parts = [sequence[:, -1]] + self.clinical(clinical, image.shape[0], image.device)
        logit = self.head(torch.cat(parts, dim=1))
        return torch.cat([logit, predicted_t2], dim=1)
