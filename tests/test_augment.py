"""Augmentation: drawn once per exam, identical across its slices, matches torchvision."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from mrnet.core.augment import AffineParams, apply_affine, augment, draw_params


def test_identical_slices_stay_identical() -> None:
    base = torch.rand(1, 48, 48)
    vol = base.repeat(6, 1, 1)
    out = augment(vol, torch.tensor([6]), 25.0, 25.0, 0.5, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], base[0])  # it did transform
    for i in range(1, 6):
        assert torch.equal(out[i], out[0])


def test_differs_between_exams_and_between_draws() -> None:
    base = torch.rand(1, 48, 48)
    vol = base.repeat(4, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = augment(vol, torch.tensor([2, 2]), 25.0, 25.0, 0.5, g)
    assert not torch.allclose(out[0], out[2])
    again = augment(vol, torch.tensor([2, 2]), 25.0, 25.0, 0.5, g)  # next epoch's draw
    assert not torch.allclose(out, again)


def test_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = draw_params(5, 64, 25.0, 25.0, 0.5, torch.Generator().manual_seed(3))
    b = draw_params(5, 64, 25.0, 25.0, 0.5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.angle.abs().max() <= 25.0
    assert a.tx.abs().max() <= 25.0 * 64 / 256


def test_matches_torchvision_affine() -> None:
    img = torch.zeros(1, 64, 64)
    img[0, 10:20, 30:50] = 1.0
    img[0, 40:45, 5:12] = 0.5
    for flip in (False, True):
        p = AffineParams(torch.tensor([17.0]), torch.tensor([5.0]), torch.tensor([-3.0]),
                         torch.tensor([flip]))
        ours = apply_affine(img, torch.tensor([1]), p)
        src = TF.hflip(img) if flip else img
        ref = TF.affine(src, angle=17.0, translate=[5, -3], scale=1.0, shear=[0.0],
                        interpolation=TF.InterpolationMode.BILINEAR)
        assert (ours - ref).abs().max() < 1e-3
