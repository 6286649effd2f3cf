"""Backbones for every model of the project: torchvision feature extractors with a grey stem,
their init, memory layout and the pooling of their feature maps.

Only nn.Modules and tensor functions live here; ImageNet weights come through
:mod:`mrnet.core.weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from mrnet.core.weights import BACKBONES, INITS, TORCHVISION_NAMES, load_pretrained

__all__ = ["BACKBONES", "INITS"]  # re-exported for callers that build backbones


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


class AlexNet(nn.Module):
    """torchvision's ``AlexNet`` (same modules, names and default init, built in the same
    order), so the same seed gives the same weights and ImageNet state dicts load unchanged.

    Defined here because importing torchvision pulls in ``torch._dynamo`` (seconds of CPU in
    every stage process); only the other backbones import it. Its classifier is never run, but
    it is built so that the random draws after it (the model's head) are torchvision's too.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )


def _network(name: str) -> nn.Module:
    """The randomly initialised torchvision network ``name`` (with its classifier)."""
    if name == "alexnet":
        return AlexNet()
    import torchvision  # only for the other backbones: see AlexNet

    return getattr(torchvision.models, TORCHVISION_NAMES[name][0])(weights=None)


def make_backbone(name: str, pretrained: bool = False,
                  init: str = "default") -> tuple[nn.Module, int]:
    """A torchvision feature extractor (no classifier) and its output channel count.

    ``init`` is how a randomly initialised backbone starts: ``"default"`` (torchvision's) or
    ``"kaiming"`` (:func:`kaiming_init`); ImageNet weights replace either.
    """
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    net = _network(name)
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
    """Switch a model built on these backbones (weights and inputs) to the channels_last
    layout, in place; its ``channels_last`` attribute tells :func:`as_input` to follow."""
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


def class_activation_maps(features: nn.Module, classifier: nn.Linear, x: torch.Tensor,
                          channels_last: bool = False) -> torch.Tensor:
    """Class activation maps (S, h, w): the feature maps of ``x`` weighted by the one-logit
    ``classifier`` (Zhou et al. 2016).

    AlexNet and VGG end in a max-pool that leaves AlexNet a 1x1 map at 64 px; the maps are
    taken before it (same channels, same weights), so they keep a spatial layout.
    """
    if isinstance(features, nn.Sequential) and isinstance(features[-1], nn.MaxPool2d):
        features = features[:-1]
    maps = features(as_input(x, channels_last)).float()
    w = classifier.weight.float().view(1, -1, 1, 1)
    return (maps * w).sum(1)
