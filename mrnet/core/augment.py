"""Random affine augmentation drawn once per exam and applied identically to all its slices.

One batched warp on the device: parameters are drawn on a CPU ``torch.Generator`` that the
caller owns (so the same seed gives the same draws on any device), then expanded per slice.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

# Translation in params is given in pixels at the paper's 256 px and scaled to the image size.
REFERENCE_SIZE = 256


class AffineParams(NamedTuple):
    """Per-exam augmentation parameters, each (B,)."""

    angle: torch.Tensor  # degrees, counter-clockwise
    tx: torch.Tensor  # pixels at the image's own size, +x is right
    ty: torch.Tensor  # pixels, +y is down
    flip: torch.Tensor  # bool, horizontal flip applied before the rotation


def draw_params(n_exams: int, size: int, rotation: float, translation: float, flip: float,
                generator: torch.Generator) -> AffineParams:
    """Draw one set of affine parameters per exam from ``generator``."""
    u = torch.rand(n_exams, 4, generator=generator, dtype=torch.float64)
    t = translation * size / REFERENCE_SIZE
    return AffineParams(
        angle=((u[:, 0] * 2 - 1) * rotation).float(),
        tx=((u[:, 1] * 2 - 1) * t).float(),
        ty=((u[:, 2] * 2 - 1) * t).float(),
        flip=u[:, 3] < flip,
    )


def affine_matrices(p: AffineParams, size: int) -> torch.Tensor:
    """(B, 2, 3) matrices for ``F.affine_grid`` mapping output to input coordinates."""
    a = p.angle.double() * math.pi / 180.0
    cos, sin = torch.cos(a), torch.sin(a)
    sx = torch.where(p.flip, -1.0, 1.0).double()
    # Output pixel x_out = R · (S · x_in) + t  ⇒  x_in = S⁻¹ · R⁻¹ · (x_out − t).
    # Coordinates are normalised to [-1, 1], so pixel shifts become 2·t/size.
    tx, ty = 2.0 * p.tx.double() / size, 2.0 * p.ty.double() / size
    r00, r01, r10, r11 = cos, sin, -sin, cos  # R⁻¹ for a counter-clockwise image rotation
    theta = torch.stack([
        torch.stack([sx * r00, sx * r01, -sx * (r00 * tx + r01 * ty)], dim=1),
        torch.stack([r10, r11, -(r10 * tx + r11 * ty)], dim=1),
    ], dim=1)
    return theta.float()


def apply_affine(slices: torch.Tensor, counts: torch.Tensor, p: AffineParams) -> torch.Tensor:
    """Warp packed slices (S, H, W) of exams with ``counts`` (B,) by per-exam parameters.

    Areas moved in from outside the image are filled with zeros (background). Each exam is
    one ``grid_sample`` call with its slices as channels, so the sampling grid is computed
    once per exam rather than once per slice (half the cost of a per-slice warp).
    """
    size = slices.shape[-1]
    theta = affine_matrices(p, size).to(device=slices.device, dtype=slices.dtype)
    exams = slices.split(counts.tolist())
    out = []
    for i, exam in enumerate(exams):
        grid = F.affine_grid(theta[i:i + 1], [1, *exam.shape], align_corners=False)
        out.append(F.grid_sample(exam.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[0])
    return torch.cat(out) if len(out) > 1 else out[0]


def augment(slices: torch.Tensor, counts: torch.Tensor, rotation: float, translation: float,
            flip: float, generator: torch.Generator) -> torch.Tensor:
    """Draw per-exam parameters and warp; float slices in, float slices out."""
    p = draw_params(len(counts), slices.shape[-1], rotation, translation, flip, generator)
    return apply_affine(slices, counts, p)
