"""The MURA CNN: one logit per view from any of the project's backbones; a study's probability
is the mean of its views' probabilities. Also how its inputs are made and its outputs read,
and rebuilding it from its checkpoint; no training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mrnet.core.backbones import (as_input, class_activation_maps, make_backbone, segment_pool,
                                  spatial_pool)
from mrnet.core.errors import UserError
from mrnet.core.packed import PackedSet, offsets_of
from mrnet.core.predict import predict
from mrnet.core.stats import sigmoid

# The trained model's file name in train.out.
CHECKPOINT = "model.pt"
# ImageNet statistics on [0, 1] pixels, per RGB channel (the paper normalises with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(views: torch.Tensor,
                       warp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 grey views (V, H, W) -> float (V, 3, H, W) on [0, 1] scale normalised per channel.

    Args:
        warp: the training augmentation, applied to the [0, 1] views before the grey channel is
            repeated into RGB; it fills with 0 (black film, as outside a radiograph).
    """
    x = views.float().div_(255.0)
    if warp is not None:
        x = warp(x)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.unsqueeze(1) - mean) / std


def study_mean(view_probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean of each study's view probabilities: (V,) and views per study (B,) -> (B,)."""
    return segment_pool(view_probs.float().unsqueeze(1), counts, "mean").squeeze(1)


class MuraNet(nn.Module):
    """Per view: backbone features -> global pool (average, or max) -> linear -> one logit.

    The modules (and state-dict keys) are named as in :class:`mrnet.model.MRNet`. Nothing is
    pooled across views inside the network: studies are packed, the views of several studies
    go through one forward pass and :meth:`study_probs` averages each study's view
    probabilities.
    """

    def __init__(self, backbone: str = "densenet169", pretrained: bool = False,
                 init: str = "default", spatial_pool: str = "avg") -> None:
        super().__init__()
        if spatial_pool not in ("avg", "max"):
            raise ValueError(f"unknown spatial_pool {spatial_pool!r}; expected 'avg' or 'max'")
        self.backbone, self.pool = backbone, spatial_pool
        self.features, self.width = make_backbone(backbone, pretrained, init)
        self.classifier = nn.Linear(self.width, 1)
        self.channels_last = False

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (V, C, h, w) of normalised views (V, 3, H, W)."""
        return self.features(as_input(x, self.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (V,) of normalised views (V, 3, H, W)."""
        feats = spatial_pool(self.slice_features(x), self.pool)
        return self.classifier(feats.to(self.classifier.weight.dtype)).squeeze(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps (V, h, w) of normalised views
        (:func:`mrnet.core.backbones.class_activation_maps`)."""
        return class_activation_maps(self.features, self.classifier, x, self.channels_last)

    def study_probs(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Probabilities (B,) of studies whose views (V, 3, H, W) come in groups of ``counts``."""
        return study_mean(torch.sigmoid(self(x).float()), counts)


def study_probs(view_logits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each study's probability, the mean of its views' (float64) probabilities."""
    starts = offsets_of(counts)
    return np.add.reduceat(sigmoid(view_logits), starts) / counts


def view_batches(order: Sequence[int], counts: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of whole studies from ``order`` with at most ``budget`` views each
    (a study with more views than the budget forms a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    n = 0
    for i in order:
        c = int(counts[i])
        if current and n + c > budget:
            batches.append(current)
            current, n = [], 0
        current.append(int(i))
        n += c
    if current:
        batches.append(current)
    return batches


def view_inputs(data: PackedSet, device: torch.device,
                views_per_batch: int = 64) -> Iterator[tuple[torch.Tensor]]:
    """Model inputs of every view of ``data``, whole studies at a time, in cache order."""
    for index in view_batches(range(len(data)), data.counts.tolist(), views_per_batch):
        x, _ = data.batch(index)
        yield (imagenet_normalize(x.to(device)),)


def view_logits(model: nn.Module, data: PackedSet, device: torch.device,
                views_per_batch: int = 64, bf16: bool = False) -> np.ndarray:
    """Logits (total views,) of every view of ``data`` in cache order; eval mode, no
    augmentation, studies never shuffled."""
    return predict(model, view_inputs(data, device, views_per_batch), device, bf16)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MuraNet, dict]:
    """Rebuild the trained per-view CNN from its checkpoint (weights only, no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: MURA checkpoint not found; train it with "
                        "`dvc repro mura/dvc.yaml`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = ckpt["config"]["model"]
    # Checkpoints written before the pooling was a parameter used the average.
    model = MuraNet(arch["backbone"], spatial_pool=arch.get("spatial_pool", "avg"))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
