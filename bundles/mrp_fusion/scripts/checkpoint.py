"""Settings saved in every checkpoint beside the weights.

A checkpoint (``models/model_<model>.pt``) carries what defines its network and inputs (which model,
widths, shortcut type, embedding size, ablation flags, visits and their phases, MRI channel, image sizes, the rhpc
fields of the cohort it was trained on), and evaluate / inference read them from it, so a model
trained under any profile is used without hand-set flags.
"""

from __future__ import annotations

import os

import torch

from .networks import mrp_network


class ModelSettings:
    """The settings as an object ``CheckpointSaver`` can save (it stores ``state_dict()`` of each
    entry; a Mapping would be taken for a dict of further objects)."""

    def __init__(self, **settings):
        self.settings = dict(settings)

    def state_dict(self) -> dict:
        return dict(self.settings)

    def load_state_dict(self, state: dict) -> None:
        self.settings = dict(state)


def checkpoint_path(ckpt_dir: str, model: str) -> str:
    """Where training writes the best checkpoint of ``model``."""
    return os.path.join(ckpt_dir, f"model_{model}.pt")


def saved_settings(path: str, model: str | None = None) -> dict:
    """The settings saved in the checkpoint at ``path``; refuses a checkpoint without them or of
    another model than ``model``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found (train the bundle first, or set ckpt_dir)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    settings = checkpoint.get("settings") if isinstance(checkpoint, dict) else None
    if not settings or not settings.get("clinical_fields"):
        raise ValueError(f"{path}: checkpoint has no saved settings (model, widths, visits, rhpc fields); "
                         "it was written by another program")
    if model is not None and settings.get("model") != model:
        raise ValueError(f"{path}: checkpoint of the {settings.get('model')} model, expected the {model} model")
    return {"shortcut_type": "B", **settings}  # checkpoints before version 0.4.0 do not record it


def network_from_settings(settings: dict, clinical_fields: list[dict] | None = None):
    """The (untrained) network a checkpoint's settings describe; its weights and age statistics
    come from the checkpoint's state dict."""
    return mrp_network(settings["model"], clinical_fields or settings["clinical_fields"],
                       widen_factor=settings["widen_factor"], embed_dim=settings["embed_dim"],
                       time_embedding=settings["time_embedding"], knowledge_predictor=settings["knowledge_predictor"],
                       shortcut_type=settings["shortcut_type"])
