"""Settings saved in every checkpoint beside the weights (identical in each pCR bundle).

A checkpoint carries what defines its architecture and inputs (widths, layers, visits, channels,
the clinical fields of the cohort it was trained on), and evaluate / inference / export read them
from it, so a model trained under any profile is used without hand-set flags.
"""

from __future__ import annotations

import os

import torch


class ModelSettings:
    """The settings as an object ``CheckpointSaver`` can save (it stores ``state_dict()`` of each
    entry; a Mapping would be taken for a dict of further objects)."""

    def __init__(self, **settings):
        self.settings = dict(settings)

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state: dict) -> None:
        self.settings = dict(state)


def saved_settings(path: str) -> dict:
    """The settings saved in the checkpoint at ``path``; refuses a checkpoint without them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found (train the bundle first, or set ckpt_dir)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    settings = checkpoint.get("settings") if isinstance(checkpoint, dict) else None
    if not settings:
        raise ValueError(f"{path}: checkpoint has no saved settings (widths, visits, channels); "
                         "it was written by another program or an older version of this bundle")
    if not settings.get("clinical_fields"):
        raise ValueError(f"{path}: checkpoint has no clinical encoding (clinical_fields); "
                         "it was written by an older version of this bundle")
    return settings
