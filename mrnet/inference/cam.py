"""Class activation maps (CAM) of the per-plane MRNet CNNs.

The CAM of a slice is the last convolutional feature maps weighted by the linear layer's
weights (Zhou et al. 2016, as in the MRNet paper): where in the slice the features that push
the logit up are. Each plane's maps are computed at the checkpoint's training resolution with
the same preprocessing as prediction (:func:`mrnet.core.packed.resize_volume`, then
:func:`mrnet.model.normalize`), ReLU'd, scaled to [0, 1] per plane (over all its slices, so
slices stay comparable) and upsampled bilinearly onto the input slices.

For AlexNet and VGG the maps come from before their last max-pool (see
:meth:`mrnet.model.MRNet.cam`): 3x3 at 64 px, 15x15 at 256 px.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mrnet.core.packed import resize_volume
from mrnet.model import MRNet, normalize


class PlaneCam(NamedTuple):
    """The CAM of one plane's series."""

    cam: np.ndarray  # (S, H, W) float32 in [0, 1], the input series' shape
    peak_slice: int  # the slice with the highest (pre-ReLU) activation
    raw_max: float  # highest raw activation; <= 0 means the CAM is all zero after ReLU


@torch.inference_mode()
def plane_cam(model: MRNet, volume: np.ndarray, image_size: int,
              device: torch.device | str = "cpu") -> PlaneCam:
    """The CAM of one series for the model of one (task, plane).

    Args:
        model: a trained MRNet (put in eval mode here).
        volume: uint8 (S, H, W) series at its input resolution.
        image_size: the model's training resolution (the checkpoint's ``image_size``).
        device: where to run the model.
    Returns:
        :class:`PlaneCam` with ``cam`` of shape (S, H, W) in [0, 1].
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, H, W), got shape {volume.shape}")
    model.eval()
    device = torch.device(device)
    small = torch.from_numpy(resize_volume(volume, image_size)).to(device)
    counts = torch.tensor([small.shape[0]], device=device)
    raw = model.cam(normalize(small, counts)).float()
    per_slice = raw.flatten(1).amax(1)
    peak = int(per_slice.argmax())
    top = float(per_slice.max())
    cam = raw.clamp_min(0)
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    up = F.interpolate(cam.unsqueeze(1), size=tuple(volume.shape[1:]), mode="bilinear",
                       align_corners=False).squeeze(1)
    return PlaneCam(up.clamp(0.0, 1.0).cpu().numpy().astype(np.float32), peak, top)
