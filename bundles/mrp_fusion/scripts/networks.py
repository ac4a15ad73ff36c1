"""Networks of the MRP fusion system (Gao et al., "Model development"): the uni-modal rhpc model,
iMRrhpc (longitudinal MRI with time embedding) and iMGrhpc (four mammogram views), each image
model with a cross-modal knowledge predictor on its image feature alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from monai.networks.nets import resnet18
from torch import nn

from .rhpc import RhpcEncoding

PHASES = ("pre", "mid", "post")  # the phase index of a visit: 0, 1, 2
VIEWS = ("L_CC", "L_MLO", "R_CC", "R_MLO")  # order of the mammogram views in ``image``


class RhpcExtractor(nn.Module):
    """The paper's rhpc extractor: each variable embedded by Linear + ELU (age continuous,
    z-scored; a categorical variable's Linear on its one-hot is a row of an embedding table, one
    table for all variables), concatenated, a two-layer ELU MLP with output dimension 256.

    The age mean and standard deviation are buffers set from the training patients and saved
    with the model; an unknown age (NaN) sits at the training mean. Without ``rhpc_index`` every
    variable is ``unknown`` (shape checks and export).
    """

    def __init__(self, clinical_fields: Sequence[dict], embed_dim: int = 32, out_features: int = 256,
                 age_stats: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        encoding = RhpcEncoding(clinical_fields)
        levels = torch.tensor(encoding.levels)
        # derived from clinical_fields, so not saved (federated averaging must not touch them)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("offsets", torch.cumsum(levels, 0) - levels, persistent=False)
        self.register_buffer("unknown_level", torch.tensor(encoding.unknown_level), persistent=False)
        self.register_buffer("age_mean", torch.tensor(float(age_stats[0])))
        self.register_buffer("age_std", torch.tensor(float(age_stats[1])))
        self.categorical = nn.Embedding(int(levels.sum()), embed_dim)
        self.age = nn.Linear(1, embed_dim)
        self.mlp = nn.Sequential(nn.Linear((len(encoding.levels) + 1) * embed_dim, out_features), nn.ELU(),
                                 nn.Linear(out_features, out_features), nn.ELU())
        self.out_features = out_features

    def forward(self, rhpc_index: Optional[torch.Tensor], age: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        if rhpc_index is None:
            if bool((self.unknown_level < 0).any()):
                raise ValueError("rhpc_index is required: some rhpc variable has no 'unknown' level")
            rhpc_index = self.unknown_level.expand(batch, -1)
        if rhpc_index.shape[1] != self.levels.shape[0]:
            raise ValueError(f"rhpc_index has {rhpc_index.shape[1]} variables, the model {self.levels.shape[0]}")
        if bool(((rhpc_index < 0) | (rhpc_index >= self.levels)).any()):
            raise ValueError("rhpc_index outside its variable's levels")
        if age is None:
            age = torch.full((batch, 1), float("nan"), device=rhpc_index.device)
        z = (age - self.age_mean) / self.age_std
        z = torch.where(torch.isnan(z), torch.zeros_like(z), z)
        parts = F.elu(self.categorical(rhpc_index + self.offsets)).flatten(1)
        return self.mlp(torch.cat([parts, F.elu(self.age(z))], dim=1))


class RhpcNet(nn.Module):
    """The uni-modal rhpc baseline: rhpc extractor -> linear classifier -> pCR logit (B, 1)."""

    def __init__(self, clinical_fields: Sequence[dict], embed_dim: int = 32, age_stats: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        self.extractor = RhpcExtractor(clinical_fields, embed_dim, age_stats=age_stats)
        self.head = nn.Linear(self.extractor.out_features, 1)

    @torch.jit.export
    def features(self, rhpc_index: torch.Tensor, age: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The 256-d rhpc feature."""
        return self.extractor(rhpc_index, age, rhpc_index.shape[0])

    def forward(self, rhpc_index: torch.Tensor, age: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.features(rhpc_index, age))


class ImageSetEncoder(nn.Module):
    """One MONAI ResNet18 (shared weights) over a set of images of a patient (MRI visits or
    mammogram views), pooled by a masked mean over the available ones.

    ``image`` is (B, N, C, *spatial), ``mask`` (B, N) marks the available images and ``slot``
    (B, N) says which each is (the visit's phase, the view). Each image feature is joined with the
    one-hot slot's embedding (Linear + ELU) and projected (Linear + ELU) before pooling: a mean of
    features and embeddings joined linearly would separate them again and lose which image had
    which slot. ``slot_embedding=False`` leaves the embedding out (the time-embedding ablation).
    Unavailable images never reach the ResNet, so neither their pixels nor their slot matter,
    in training too (batch norm statistics). ``shortcut_type`` is MONAI's: "B" (1x1 convolution
    on a downsampling shortcut) or "A" (zero-padded identity: the layout of MedicalNet's
    pretrained 3D ResNet18, so its weights load).
    """

    def __init__(self, spatial_dims: int, in_channels: int, widen_factor: float, slots: int,
                 slot_embedding: bool = True, embed_dim: int = 32, shortcut_type: str = "B"):
        super().__init__()
        self.resnet = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, feed_forward=False,
                               widen_factor=widen_factor, shortcut_type=shortcut_type)
        self.dim = int(512 * widen_factor)
        self.slots = slots
        self.embed = nn.Sequential(nn.Linear(slots, embed_dim), nn.ELU()) if slot_embedding else None
        self.project = nn.Sequential(nn.Linear(self.dim + embed_dim * int(slot_embedding), self.dim), nn.ELU())

    def forward(self, image: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        batch, count = mask.shape[0], mask.shape[1]
        weight = mask.to(image.dtype)
        if bool((weight.sum(1) == 0).any()):
            raise ValueError("a patient has no available image")
        available = weight.reshape(-1) > 0
        features = self.resnet(image.reshape([batch * count] + list(image.shape[2:]))[available])
        if self.embed is not None:
            onehot = F.one_hot(slot.reshape(-1)[available], self.slots).to(features.dtype)
            features = torch.cat([features, self.embed(onehot)], dim=1)
        features = self.project(features)
        full = features.new_zeros(batch * count, self.dim)
        full[available] = features
        return full.reshape(batch, count, self.dim).sum(1) / weight.sum(1, keepdim=True)


class KnowledgePredictor(nn.Module):
    """The cross-modal knowledge predictor: from the image feature alone, a linear head per rhpc
    variable (logits of its known levels, concatenated in variable order), one for the z-scored
    age and one for pCR."""

    def __init__(self, in_features: int, known_levels: Sequence[int]):
        super().__init__()
        self.rhpc = nn.Linear(in_features, sum(known_levels))
        self.age = nn.Linear(in_features, 1)
        self.pcr = nn.Linear(in_features, 1)

    def forward(self, feature: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"knowledge_rhpc": self.rhpc(feature), "knowledge_age": self.age(feature),
                "knowledge_pcr": self.pcr(feature)}


class _ImageRhpcNet(nn.Module):
    """Image feature and rhpc feature concatenated -> linear response head -> pCR logit; the
    knowledge predictor (``knowledge_predictor=False``: the ablation) on the image feature."""

    def __init__(self, encoder: ImageSetEncoder, clinical_fields: Sequence[dict], embed_dim: int,
                 knowledge_predictor: bool, age_stats: Sequence[float]):
        super().__init__()
        self.encoder = encoder
        self.rhpc = RhpcExtractor(clinical_fields, embed_dim, age_stats=age_stats)
        known = RhpcEncoding(clinical_fields).known_levels
        self.knowledge = KnowledgePredictor(encoder.dim, known) if knowledge_predictor else None
        self.head = nn.Linear(encoder.dim + self.rhpc.out_features, 1)

    def _outputs(self, image: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor,
                 rhpc_index: Optional[torch.Tensor], age: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
        feature = self.encoder(image, mask, slot)
        rhpc = self.rhpc(rhpc_index, age, image.shape[0])
        outputs = {"pred": self.head(torch.cat([feature, rhpc], dim=1))}
        if self.knowledge is not None:
            outputs.update(self.knowledge(feature))
        return outputs


class IMRrhpc(_ImageRhpcNet):
    """iMRrhpc: any subset of the MRI visits (``image`` (B, V, C, H, W, D), ``visit_mask`` (B, V),
    ``phase`` (B, V) with pre 0, mid 1, post 2) through one 3D ResNet18 with a one-hot time
    embedding per visit (``time_embedding=False``: the ablation), masked mean over the available
    visits, fused with the rhpc feature.

    ``forward`` gives the pCR logit (B, 1); ``outputs`` also the knowledge predictor's outputs
    for the loss. Without ``visit_mask`` every visit is available, without ``phase`` the visits
    are pre, mid, post in order.
    """

    def __init__(self, clinical_fields: Sequence[dict], in_channels: int = 1, widen_factor: float = 1.0,
                 embed_dim: int = 32, time_embedding: bool = True, knowledge_predictor: bool = True,
                 age_stats: Sequence[float] = (0.0, 1.0), shortcut_type: str = "B"):
        encoder = ImageSetEncoder(3, in_channels, widen_factor, len(PHASES), time_embedding, embed_dim, shortcut_type)
        super().__init__(encoder, clinical_fields, embed_dim, knowledge_predictor, age_stats)

    @torch.jit.export
    def outputs(self, image: torch.Tensor, visit_mask: Optional[torch.Tensor] = None,
                phase: Optional[torch.Tensor] = None, rhpc_index: Optional[torch.Tensor] = None,
                age: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        batch, visits = image.shape[0], image.shape[1]
        if visit_mask is None:
            visit_mask = torch.ones(batch, visits, device=image.device)
        if phase is None:
            phase = torch.arange(visits, device=image.device).expand(batch, visits)
        return self._outputs(image, visit_mask, phase, rhpc_index, age)

    def forward(self, image: torch.Tensor, visit_mask: Optional[torch.Tensor] = None,
                phase: Optional[torch.Tensor] = None, rhpc_index: Optional[torch.Tensor] = None,
                age: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.outputs(image, visit_mask, phase, rhpc_index, age)["pred"]


class IMGrhpc(_ImageRhpcNet):
    """iMGrhpc: the four pre-treatment mammogram views (``image`` (B, 4, 1, H, W) in the order of
    ``VIEWS``, ``view_mask`` (B, 4)) through one 2D ResNet18 with a one-hot view embedding,
    masked mean over the available views, fused with the rhpc feature.

    ``forward`` gives the pCR logit (B, 1); ``outputs`` also the knowledge predictor's outputs.
    """

    def __init__(self, clinical_fields: Sequence[dict], in_channels: int = 1, widen_factor: float = 1.0,
                 embed_dim: int = 32, knowledge_predictor: bool = True, age_stats: Sequence[float] = (0.0, 1.0),
                 shortcut_type: str = "B"):
        encoder = ImageSetEncoder(2, in_channels, widen_factor, len(VIEWS), True, embed_dim, shortcut_type)
        super().__init__(encoder, clinical_fields, embed_dim, knowledge_predictor, age_stats)

    @torch.jit.export
    def outputs(self, image: torch.Tensor, view_mask: Optional[torch.Tensor] = None,
                rhpc_index: Optional[torch.Tensor] = None, age: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        batch, views = image.shape[0], self.encoder.slots
        if image.shape[1] != views:
            raise ValueError(f"image must hold the views L_CC, L_MLO, R_CC, R_MLO, got {image.shape[1]} views")
        if view_mask is None:
            view_mask = torch.ones(batch, views, device=image.device)
        view = torch.arange(views, device=image.device).expand(batch, views)
        return self._outputs(image, view_mask, view, rhpc_index, age)

    def forward(self, image: torch.Tensor, view_mask: Optional[torch.Tensor] = None,
                rhpc_index: Optional[torch.Tensor] = None, age: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.outputs(image, view_mask, rhpc_index, age)["pred"]


def mrp_network(model: str, clinical_fields: Sequence[dict], widen_factor: float = 1.0, embed_dim: int = 32,
                time_embedding: bool = True, knowledge_predictor: bool = True, in_channels: int = 1,
                age_stats: Sequence[float] = (0.0, 1.0), shortcut_type: str = "B") -> nn.Module:
    """The network of ``model`` (``rhpc``: ``RhpcNet``, ``imr``: ``IMRrhpc``, ``img``: ``IMGrhpc``)
    with the settings that apply to it (the bundle's ``model`` selector)."""
    if model == "rhpc":
        return RhpcNet(clinical_fields, embed_dim, age_stats=age_stats)
    if model == "imr":
        return IMRrhpc(clinical_fields, in_channels, widen_factor, embed_dim, time_embedding, knowledge_predictor,
                       age_stats, shortcut_type)
    if model == "img":
        return IMGrhpc(clinical_fields, in_channels, widen_factor, embed_dim, knowledge_predictor, age_stats,
                       shortcut_type)
    raise ValueError(f"model must be one of rhpc, imr, img, got {model!r}")


def load_backbone(network: nn.Module, path: str | None) -> nn.Module:
    """Initialise the image model's ResNet18 (``network.encoder.resnet``) from the state dict in
    ``path`` (``None``: from scratch, the default). A ``state_dict`` wrapper and the ``module.``
    prefix of data-parallel checkpoints (MedicalNet's) are accepted; every other key must match
    the bundle's ResNet exactly (same ``widen_factor`` and ``shortcut_type``, one input channel),
    or the error names the file and the first mismatches: a partly loaded backbone would train
    silently from a mix of weights."""
    if not path:
        return network
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise ValueError(f"backbone_ckpt {path}: the {type(network).__name__} model has no image backbone")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    own = encoder.resnet.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        problems = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape differs for", shapes)) if keys]
        raise ValueError(f"backbone_ckpt {path} does not fit the bundle's ResNet18: {'; '.join(problems)}")
    encoder.resnet.load_state_dict(state)
    return network


def parameter_groups(network: nn.Module, learning_rate: float, head_lr_factor: float = 1.0) -> list[dict]:
    """Optimiser groups: the response classifier (``head``) at ``learning_rate * head_lr_factor``,
    everything else at ``learning_rate``. Adam moves a weight by about the learning rate per step,
    so the few steps of a short run cannot grow the classifier's weights to the size the fused
    features need; a faster head lets them (the pCR bundles' CPU profile does the same)."""
    head = [p for n, p in network.named_parameters() if n.startswith("head.")]
    if not head:
        raise ValueError(f"{type(network).__name__} has no 'head' layer")
    rest = [p for n, p in network.named_parameters() if not n.startswith("head.")]
    return [{"params": rest, "lr": learning_rate}, {"params": head, "lr": learning_rate * head_lr_factor}]
