"""ONNX export of an MRP network with all its inputs.

``monai.bundle ckpt_export`` writes TorchScript, whose forward takes every input; ONNX runtimes
need each input named, so the export runs from Python:

    network.load_state_dict(torch.load("models/model_imr.pt", weights_only=True)["model"])
    export_onnx(network.eval(), "models/model_imr.onnx", "imr", visits=4)

The network skips unavailable visits and views by masked indexing, a shape that depends on the
data, which ``torch.export`` (the dynamo exporter) refuses; the TorchScript-tracing exporter
records it as ONNX NonZero/Gather, so any visit or view subset runs. Its input checks (a patient
with no image, an rhpc level out of range) are traced as constants: validate inputs before the
ONNX model, as ``inference.json`` does.
"""

from __future__ import annotations

import torch
from torch import nn

from .engine import INPUTS  # each network's forward arguments, in order: the ONNX input names


def example_inputs(network: nn.Module, model: str, visits: int = 4, size: tuple = (16, 16, 16),
                   mg_size: tuple = (64, 32), batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of ``model``'s forward in order, every image available (MRI visits pre, mid, mid, post)."""
    extractor = network.extractor if model == "rhpc" else network.rhpc
    rhpc = (torch.zeros(batch, extractor.levels.shape[0], dtype=torch.long), torch.full((batch, 1), 50.0))
    if model == "rhpc":
        return rhpc
    if model == "imr":
        phase = torch.tensor([0, 1, 1, 2][:visits]).expand(batch, visits).contiguous()
        return (torch.zeros(batch, visits, 1, *size), torch.ones(batch, visits), phase) + rhpc
    return (torch.zeros(batch, 4, 1, *mg_size), torch.ones(batch, 4)) + rhpc


def export_onnx(network: nn.Module, path: str, model: str, **example) -> None:
    """Write ``network`` (``model``: rhpc, imr or img) to ``path`` with its named inputs and the
    output ``pred``; the batch size is dynamic."""
    names = list(INPUTS[model])
    torch.onnx.export(network.eval(), example_inputs(network, model, **example), path, input_names=names,
                      output_names=["pred"], dynamic_axes={name: {0: "batch"} for name in names + ["pred"]},
                      dynamo=False)
