"""The MRNet CNNs: per-slice backbone features, spatial pool, pool over slices, one logit;
the multitask network over three planes; the preprocessing they expect, their scoring of a
packed set of exams (:func:`exam_logits`) and rebuilding one from its checkpoint.

Nothing here reads a dataset or trains: the backbones come from :mod:`mrnet.core.backbones`,
the exams from a :class:`~mrnet.core.packed.PackedSet` the caller built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mrnet.core.backbones import (as_input, class_activation_maps, make_backbone, segment_pool,
                                  spatial_pool)
from mrnet.core.errors import UserError
from mrnet.core.packed import PackedSet
from mrnet.core.predict import iterate_batches, n_batches, predict

# Per-volume scaling to [0, 255] then the normalisation of the MRNet authors' code.
PIXEL_MEAN = 58.09
PIXEL_STD = 49.73


@dataclass(frozen=True)
class MRNetConfig:
    """What it takes to rebuild a model; stored inside every checkpoint."""

    backbone: str = "alexnet"
    slice_pool: str = "max"
    # How each slice's feature map becomes one vector: "avg" (the paper) or "max". At 64 px
    # AlexNet's map is 1x1 after its last max-pool, so both are a max over the whole slice; at
    # 256 px the average over its 7x7 map dilutes a lesion that fills one or two cells.
    spatial_pool: str = "avg"


class MRNet(nn.Module):
    """One MRNet CNN for one task and plane.

    Slices of several exams may be packed into one batch: ``forward(x, counts)`` takes
    the concatenated slices and the slice count of each exam and returns one logit per exam.
    With one exam per batch it is exactly the paper's computation.
    """

    def __init__(self, config: MRNetConfig = MRNetConfig(), pretrained: bool = False,
                 init: str = "default") -> None:
        super().__init__()
        self.config = config
        self.features, self.width = make_backbone(config.backbone, pretrained, init)
        self.classifier = nn.Linear(self.width, 1)
        self.channels_last = False

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps (S, C, h, w) of normalised slices (S, H, W) or (S, 3, H, W)."""
        return self.features(as_input(x, self.channels_last))

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B,) for slices ``x`` (S, H, W) of exams with slice ``counts`` (B,)."""
        if counts is None:
            counts = torch.tensor([x.shape[0]], device=x.device)
        feats = spatial_pool(self.slice_features(x), self.config.spatial_pool)
        pooled = segment_pool(feats.float(), counts, self.config.slice_pool)
        return self.classifier(pooled.to(self.classifier.weight.dtype)).squeeze(1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps (S, h, w) of one exam
        (:func:`mrnet.core.backbones.class_activation_maps`)."""
        return class_activation_maps(self.features, self.classifier, x, self.channels_last)


def exam_range(volume: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each exam's minimum and maximum, repeated per slice as float32 (S, 1, 1) tensors."""
    flat = volume.flatten(1)
    lo = segment_pool(-flat.amin(1, keepdim=True).float(), counts, "max").neg()
    hi = segment_pool(flat.amax(1, keepdim=True).float(), counts, "max")
    return (torch.repeat_interleave(lo, counts, dim=0).view(-1, 1, 1),
            torch.repeat_interleave(hi, counts, dim=0).view(-1, 1, 1))


def normalize(volume: torch.Tensor, counts: torch.Tensor,
              warp: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The full preprocessing: per-exam scaling to [0, 255], then MRNet's normalisation.

    Args:
        volume: (S, H, W) slices of the packed exams, any dtype.
        counts: (B,) slices per exam.
        warp: the training augmentation, applied in between. It must be linear in the pixel
            values and fill with zeros (a bilinear warp is both), so it commutes with the
            per-exam scale factor: the two scalings fuse into one pass after the warp, and the
            area moved in from outside the image is each exam's minimum.
    Returns:
        float32 (S, H, W); each exam's minimum maps to ``-PIXEL_MEAN / PIXEL_STD``.
    """
    lo, hi = exam_range(volume, counts)
    x = volume.float() - lo
    if warp is not None:
        x = warp(x)
    return x.mul_(255.0 / PIXEL_STD / (hi - lo).clamp_min(1e-6)).sub_(PIXEL_MEAN / PIXEL_STD)


def exam_batches(data: PackedSet, device: torch.device,
                 exams_per_batch: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Model inputs (normalised slices, counts) of every exam of ``data``, in order."""
    for index in iterate_batches(len(data), exams_per_batch):
        x, counts = data.batch(index)
        counts = counts.to(device)
        yield normalize(x.to(device, non_blocking=True), counts), counts


def exam_logits(model: torch.nn.Module, data: PackedSet, device: torch.device,
                exams_per_batch: int = 8, bf16: bool = False,
                desc: str | None = None) -> np.ndarray:
    """Logits (N,) of every exam of ``data``, in order, in eval mode, without augmentation."""
    return predict(model, exam_batches(data, device, exams_per_batch), device, bf16, desc,
                   total=n_batches(len(data), exams_per_batch))


class MultitaskMRNet(nn.Module):
    """One network for all three planes and all three diagnoses (hard parameter sharing).

    Each plane has its own branch (backbone → average pool → pool over slices); the three
    exam features are concatenated and one linear head gives a logit per task.
    """

    def __init__(self, config: MRNetConfig = MRNetConfig(), planes: tuple[str, ...] = (),
                 n_tasks: int = 3, pretrained: bool = False, init: str = "default") -> None:
        super().__init__()
        if not planes:
            raise ValueError("planes must name at least one plane")
        self.config = config
        self.planes = tuple(planes)
        self.branches = nn.ModuleDict()
        width = 0
        for plane in self.planes:
            features, w = make_backbone(config.backbone, pretrained, init)
            self.branches[plane] = features
            width += w
        self.width = width
        self.classifier = nn.Linear(width, n_tasks)
        self.channels_last = False

    def forward(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Logits (B, n_tasks) from {plane: (normalised slices (S, H, W), counts (B,))}."""
        pooled = []
        for plane in self.planes:
            x, counts = inputs[plane]
            feats = spatial_pool(self.branches[plane](as_input(x, self.channels_last)),
                                 self.config.spatial_pool)
            pooled.append(segment_pool(feats.float(), counts, self.config.slice_pool))
        return self.classifier(torch.cat(pooled, dim=1).to(self.classifier.weight.dtype))


def require_checkpoint(path: str | Path) -> Path:
    """``path`` as a Path; a missing file is a :class:`UserError` naming it and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model checkpoint not found; train it with `dvc repro`")
    return path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[MRNet, dict]:
    """Rebuild a trained per-plane CNN from its checkpoint (weights only, no pickled objects)."""
    path = require_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MRNet(MRNetConfig(**ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
