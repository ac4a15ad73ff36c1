"""Training loss of the MRP image models: response prediction plus cross-modal knowledge mining."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .rhpc import RhpcEncoding

# The paper gives no loss weights: every term weighs 1.
WEIGHTS = {"pcr": 1.0, "knowledge_pcr": 1.0, "knowledge_rhpc": 1.0, "knowledge_age": 1.0}


class KnowledgeLoss(nn.Module):
    """BCE of the fused pCR logit (``pred``) plus the knowledge predictor's terms (from the image
    feature alone): BCE for pCR, cross-entropy per rhpc variable over its known levels (target -1,
    unknown, ignored) and MSE of the z-scored age (a NaN age ignored). Without knowledge outputs
    (the ablation) only the first term remains.

    The cross-entropies are averaged over the variables with a known target in the batch, so the
    rhpc variables together weigh as one task rather than drowning pCR. ``age_stats`` must be the
    network's (the same training statistics), so that the age head learns the z-scored age.
    """

    def __init__(self, clinical_fields: Sequence[dict], age_stats: Sequence[float] = (0.0, 1.0),
                 weights: Mapping[str, float] | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(WEIGHTS)}")
        self.weights = {**WEIGHTS, **(weights or {})}
        self.known_levels = RhpcEncoding(clinical_fields).known_levels
        self.age_mean, self.age_std = float(age_stats[0]), float(age_stats[1])

    def terms(self, outputs: Mapping[str, torch.Tensor], label: torch.Tensor, rhpc_target: torch.Tensor,
              age: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each unweighted term (for logging); ``label`` (B, 1), ``rhpc_target`` (B, K), ``age``
        (B, 1) raw years."""
        terms = {"pcr": F.binary_cross_entropy_with_logits(outputs["pred"], label)}
        if "knowledge_pcr" not in outputs:
            return terms
        terms["knowledge_pcr"] = F.binary_cross_entropy_with_logits(outputs["knowledge_pcr"], label)
        entropies = []
        for logits, target in zip(outputs["knowledge_rhpc"].split(self.known_levels, dim=1), rhpc_target.unbind(1)):
            known = target >= 0
            if known.any():
                entropies.append(F.cross_entropy(logits[known], target[known]))
        zero = outputs["knowledge_rhpc"].new_zeros(())
        terms["knowledge_rhpc"] = torch.stack(entropies).mean() if entropies else zero
        known = torch.isfinite(age)
        z = (age - self.age_mean) / self.age_std
        terms["knowledge_age"] = F.mse_loss(outputs["knowledge_age"][known], z[known]) if known.any() else zero
        return terms

    def forward(self, outputs: Mapping[str, torch.Tensor], label: torch.Tensor, rhpc_target: torch.Tensor,
                age: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term for name, term in self.terms(outputs, label, rhpc_target, age).items())
