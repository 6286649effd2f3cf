"""The MRNet CNN: per-slice backbone features, average pool, pool over slices, one logit.

Only nn.Modules and their construction live here; no data code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from mrnet.errors import WeightsNotFoundError

# Per-volume scaling to [0, 255] then the normalisation of the MRNet authors' code.
PIXEL_MEAN = 58.09
PIXEL_STD = 49.73

_WEIGHTS = {
    "alexnet": ("alexnet", "AlexNet_Weights"),
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights"),
    "densenet121": ("densenet121", "DenseNet121_Weights"),
    "densenet169": ("densenet169", "DenseNet169_Weights"),
}


@dataclass(frozen=True)
class MRNetConfig:
    """What it takes to rebuild a model; stored inside every checkpoint."""

    backbone: str = "alexnet"
    slice_pool: str = "max"
    # How each slice's feature map becomes one vector: "avg" (the paper) or "max". At 64 px
    # AlexNet's map is 1x1 after its last max-pool, so both are a max over the whole slice; at
    # 256 px the average over its 7x7 map dilutes a lesion that fills one or two cells.
    spatial_pool: str = "avg"


def weights_file(backbone: str) -> tuple[Path, str]:
    """Where the ImageNet weights of ``backbone`` must be in the local torch cache, and their URL."""
    _, enum_name = _WEIGHTS[backbone]
    url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def load_pretrained(net: nn.Module, backbone: str) -> None:
    """Load ImageNet weights from the local torch cache; never download.

    Raises:
        WeightsNotFoundError: the file is not in the cache; the message says where to put it.
        WeightsHashError: the file's sha256 does not match the hash in its name.
    """
    from mrnet.weights import missing_message, verify_file

    path, url = weights_file(backbone)
    if not path.is_file():
        raise WeightsNotFoundError(missing_message(path, url))
    verify_file(path, url)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)


INITS = ("default", "kaiming")


def kaiming_init(features: nn.Module) -> None:
    """He-normal weights (fan-in, ReLU gain) and zero biases for every convolution.

    torchvision's AlexNet keeps PyTorch's default init, which shrinks the activations about
    2.4x per layer: its pooled features are ~0.02 with a 15% spread between exams and every
    logit starts within 0.01 of the others. He init keeps them of order one.
    """
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def make_backbone(name: str, pretrained: bool = False,
                  init: str = "default") -> tuple[nn.Module, int]:
    """A torchvision feature extractor (no classifier) and its output channel count.

    ``init`` is how a randomly initialised backbone starts: ``"default"`` (torchvision's) or
    ``"kaiming"`` (:func:`kaiming_init`); ImageNet weights replace either.
    """
    if name not in _WEIGHTS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(_WEIGHTS)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    net = getattr(torchvision.models, _WEIGHTS[name][0])(weights=None)
    if pretrained:
        load_pretrained(net, name)
    elif init == "kaiming":
        kaiming_init(net)
    if name == "alexnet" or name == "vgg16_bn":
        features = net.features
    elif name.startswith("resnet"):
        features = nn.Sequential(*list(net.children())[:-2])
    else:  # densenet: its classifier applies a ReLU to the features first
        features = nn.Sequential(net.features, nn.ReLU(inplace=False))
    grey_stem(features)
    with torch.no_grad():
        width = features(torch.zeros(1, 3, 64, 64)).shape[1]
    return features, int(width)


class GreyStemConv2d(nn.Conv2d):
    """A backbone's first convolution that also takes grey slices (S, 1, H, W).

    A grey slice repeated into three channels meets the RGB kernels exactly as the single
    channel meets their sum over colours, at a third of the first layer's cost (about 8% of an
    AlexNet training step at 256 px). The weights keep their (out, 3, k, k) shape, so ImageNet
    weights and checkpoints load unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3 and self.groups == 1:
            weight = self.weight.sum(1, keepdim=True)
            if self.weight.is_contiguous(memory_format=torch.channels_last):
                # One-channel tensors are both layouts at once and torch then picks NCHW, which
                # would make the stem, its pooling and a copy into the next layer run NCHW
                # (2.5x slower on a bf16 CPU); channels_last strides keep the model's layout.
                weight, x = _channels_last_strides(weight), _channels_last_strides(x)
            return self._conv_forward(x, weight, self.bias)
        return super().forward(x)


def _channels_last_strides(t: torch.Tensor) -> torch.Tensor:
    """A contiguous one-channel (N, 1, H, W) tensor viewed with channels_last strides."""
    n, c, h, w = t.shape
    return t.contiguous().as_strided(t.shape, (c * h * w, 1, w * c, c))


def grey_stem(features: nn.Module) -> nn.Module:
    """Swap the first Conv2d of ``features`` for a :class:`GreyStemConv2d`, in place."""
    name, conv = next((n, m) for n, m in features.named_modules() if isinstance(m, nn.Conv2d))
    stem = GreyStemConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                          conv.padding_mode)
    stem.load_state_dict(conv.state_dict())
    parent, _, attr = name.rpartition(".")
    setattr(features.get_submodule(parent), attr, stem)
    return features


def as_input(x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Slices (S, H, W) as a one-channel batch (S, 1, H, W) for the grey stem (an (S, C, H, W)
    batch passes as is), in channels_last layout when asked (faster convolutions on GPUs and
    bf16 CPUs)."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def use_channels_last(model: nn.Module) -> nn.Module:
    """Switch an MRNet model (weights and inputs) to the channels_last layout, in place."""
    model.to(memory_format=torch.channels_last)
    model.channels_last = True
    return model


def spatial_pool(maps: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    """(S, C, h, w) feature maps to (S, C) vectors: the mean (``"avg"``) or max over h, w."""
    return maps.amax(dim=(2, 3)) if mode == "max" else maps.mean(dim=(2, 3))


def segment_pool(x: torch.Tensor, counts: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Reduce rows of ``x`` (S, C) per exam, exams given by consecutive ``counts`` (B,).

    Returns:
        (B, C): the max (or mean) over each exam's slices.
    """
    batch = counts.shape[0]
    index = torch.repeat_interleave(torch.arange(batch, device=x.device), counts)
    index = index.unsqueeze(1).expand_as(x)
    out = x.new_zeros(batch, x.shape[1])
    reduce = "amax" if mode == "max" else "mean"
    return out.scatter_reduce(0, index, x, reduce=reduce, include_self=False)


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
        """Class activation maps (S, h, w) of one exam: feature maps weighted by the linear layer.

        AlexNet and VGG end in a max-pool that leaves AlexNet a 1x1 map at 64 px; the maps are
        taken before it (same channels, same weights), so they keep a spatial layout.
        """
        features = self.features
        if isinstance(features, nn.Sequential) and isinstance(features[-1], nn.MaxPool2d):
            features = features[:-1]
        maps = features(as_input(x, self.channels_last)).float()
        w = self.classifier.weight.float().view(1, -1, 1, 1)
        return (maps * w).sum(1)


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
