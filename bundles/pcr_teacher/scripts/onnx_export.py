"""ONNX export of a pCR network with both inputs (identical in each pCR bundle).

``monai.bundle ckpt_export`` writes TorchScript from the image alone; ONNX runtimes need the
clinical vector as a named input too, so the export runs from Python:

    network.load_state_dict(torch.load("models/model.pt", weights_only=True)["model"])
    export_onnx(network, "models/model.onnx", visits=2)
"""

from __future__ import annotations

import torch
from torch import nn


def export_onnx(network: nn.Module, path: str, visits: int, channels_per_visit: int = 3, size: int = 32) -> None:
    """Write ``network`` to ``path`` with inputs ``image`` (B, visits * channels, size^3) and
    ``clinical`` (B, width of the cohort's clinical vector) and output ``pred``; the batch size is dynamic."""
    network = network.eval()
    image = torch.zeros(2, visits * channels_per_visit, size, size, size)
    clinical = torch.zeros(2, network.clinical.width)
    batch = torch.export.Dim("batch")
    torch.onnx.export(network, (image, clinical), path, input_names=["image", "clinical"], output_names=["pred"],
                      dynamic_shapes={"image": {0: batch}, "clinical": {0: batch}}, dynamo=True, verbose=False)
