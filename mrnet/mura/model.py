"""The MURA CNN: one logit per view from any of the project's backbones; a study's probability
is the mean of its views' probabilities.

Only nn.Modules and tensor functions live here; no data code.
"""

from __future__ import annotations

from typing import Callable

import torch

from mrnet.model import MRNet, MRNetConfig, segment_pool, spatial_pool

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


class MuraNet(MRNet):
    """Per view: backbone features -> global pool (average, or max) -> linear -> one logit.

    The same modules (and state-dict keys) as :class:`mrnet.model.MRNet`; a view is an exam of
    one slice, so nothing is pooled across views inside the network. Studies are packed: the
    views of several studies go through one forward pass and :meth:`study_probs` averages each
    study's view probabilities.
    """

    def __init__(self, backbone: str = "densenet169", pretrained: bool = False,
                 init: str = "default", spatial_pool: str = "avg") -> None:
        if spatial_pool not in ("avg", "max"):
            raise ValueError(f"unknown spatial_pool {spatial_pool!r}; expected 'avg' or 'max'")
        super().__init__(MRNetConfig(backbone=backbone, slice_pool="mean",
                                     spatial_pool=spatial_pool), pretrained, init)

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (V,) of normalised views (V, 3, H, W); ``counts`` is ignored (one per view)."""
        feats = spatial_pool(self.slice_features(x), self.config.spatial_pool)
        return self.classifier(feats.to(self.classifier.weight.dtype)).squeeze(1)

    def study_probs(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Probabilities (B,) of studies whose views (V, 3, H, W) come in groups of ``counts``."""
        return study_mean(torch.sigmoid(self(x).float()), counts)
