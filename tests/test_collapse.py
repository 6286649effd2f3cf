"""Training that collapses to a constant output is caught.

A collapsed MRNet outputs (nearly) the same logit for every exam: its weighted train loss sits at
the loss of the best constant and its logits have no spread. That is how from-scratch AlexNet
failed on the 256-px phantoms (benchmarks/learn256.md). These tests pin down the detector on
numbers, then on two real runs of the training loop: one that cannot move (a learning rate of
1e-9 leaves the random init in place) and one that learns a finding no one can miss.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers import PROJECT, raw_params

from mrnet.cli import apply_overrides, load_recipe
from mrnet.config import AugmentConfig, params_from_dict
from mrnet.core.backbones import segment_pool
from mrnet.core.errors import ParamsError
from mrnet.core.packed import PackedSet
from mrnet.core.stats import auc
from mrnet.core.trainer import (compute_pos_weight, constant_output_loss, output_collapsed,
                                weighted_bce)
from mrnet.model import MRNet, MRNetConfig, exam_logits, normalize
from mrnet.training.cnn import exam_epoch

CPU = torch.device("cpu")


def test_constant_output_loss_is_the_weighted_bce_of_p_one_half() -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0], dtype=np.float32)
    assert constant_output_loss(labels) == pytest.approx(2 * 0.75 * math.log(2))
    pw = compute_pos_weight(labels)
    at_half = weighted_bce(torch.zeros(8), torch.from_numpy(labels), pw).item()
    assert constant_output_loss(labels) == pytest.approx(at_half, rel=1e-6)
    # ... and no other constant does better
    for c in (-0.5, -0.1, 0.1, 0.5):
        assert weighted_bce(torch.full((8,), c), torch.from_numpy(labels), pw).item() > at_half


def test_detector_on_numbers() -> None:
    labels = np.array([0] * 13 + [1] * 3)
    flat = constant_output_loss(labels)
    rng = np.random.default_rng(0)
    constant = 0.03 + rng.normal(0, 0.002, 40)
    spread = rng.normal(0, 1.5, 40)
    assert output_collapsed([flat * 1.004, flat * 0.998, flat], constant, labels)
    # the loss fell: it learned something, whatever the logits look like
    assert not output_collapsed([flat, flat * 0.9, flat * 0.6], constant, labels)
    # the logits separate exams by whole units: not a constant output
    assert not output_collapsed([flat, flat, flat], spread, labels)
    with pytest.raises(ValueError, match="empty"):
        output_collapsed([], constant, labels)


def _squares(n: int, seed: int, size: int = 64, slices: int = 3) -> PackedSet:
    """Noise volumes; every fourth exam has a bright 16-px square on all its slices."""
    rng = np.random.default_rng(seed)
    labels = np.array([i % 4 == 0 for i in range(n)], dtype=np.float32)
    vols = []
    for positive in labels:
        vol = rng.normal(80, 20, (slices, size, size))
        if positive:
            r, c = rng.integers(4, size - 20, 2)
            vol[:, r:r + 16, c:c + 16] = 220
        vols.append(np.clip(vol, 0, 255).astype(np.uint8))
    return PackedSet(torch.from_numpy(np.concatenate(vols)), torch.arange(n) * slices,
                   torch.full((n,), slices), [f"{i:04d}" for i in range(n)],
                   torch.from_numpy(labels))


def _fit(lr: float, epochs: int) -> tuple[list[float], np.ndarray, PackedSet, PackedSet]:
    """Train the default MRNet (AlexNet, random init, Adam with weight decay 1e-4) with the
    pipeline's training loop; return the epoch losses and the logits on held-out exams."""
    train, held_out = _squares(16, 0), _squares(16, 1)
    torch.manual_seed(0)
    model = MRNet(MRNetConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    pw = compute_pos_weight(train.labels.numpy())
    losses = [exam_epoch(model, train, optimizer, pw, 4, AugmentConfig(0.0, 0.0, 0.0),
                              generator, CPU)["loss"] for _ in range(epochs)]
    return losses, exam_logits(model, held_out, CPU), train, held_out


def test_a_run_that_cannot_move_is_flagged() -> None:
    losses, logits, train, _ = _fit(lr=1e-9, epochs=2)
    assert output_collapsed(losses, logits, train.labels.numpy())


def test_a_run_that_learns_is_not_flagged() -> None:
    losses, logits, train, held_out = _fit(lr=1e-4, epochs=12)
    assert not output_collapsed(losses, logits, train.labels.numpy())
    assert losses[-1] < 0.25 * constant_output_loss(train.labels.numpy())
    assert auc(held_out.labels.numpy(), logits) > 0.95


# ---------------------------------------------------------------- the 256-px recipe's two keys


def _slices(n: int = 6, size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vol = torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8)
    counts = torch.tensor([2, n - 2])
    return normalize(vol, counts), counts


def test_spatial_max_pool_is_the_max_over_each_slice_map() -> None:
    x, counts = _slices()
    torch.manual_seed(0)
    model = MRNet(MRNetConfig(spatial_pool="max")).eval()
    with torch.no_grad():
        maps = model.slice_features(x)
        assert maps.shape[-2:] == (7, 7)  # AlexNet at 256 px
        expected = model.classifier(segment_pool(maps.amax(dim=(2, 3)), counts)).squeeze(1)
        assert torch.allclose(model(x, counts), expected, atol=1e-6)
        avg = MRNet(MRNetConfig()).eval()
        avg.load_state_dict(model.state_dict())
        assert not torch.allclose(avg(x, counts), expected, atol=1e-3)


def test_kaiming_init_keeps_features_of_order_one() -> None:
    """torchvision's init leaves AlexNet's last features at a few hundredths and the logits of
    different exams within 0.01 of each other; He init makes both about 100x larger."""
    x, counts = _slices(8)
    counts = torch.ones(8, dtype=torch.int64)
    spread = {}
    for init in ("default", "kaiming"):
        torch.manual_seed(0)
        model = MRNet(MRNetConfig(), init=init).eval()
        with torch.no_grad():
            spread[init] = (model.slice_features(x).mean().item(), model(x, counts).std().item())
    assert spread["default"][0] < 0.1 and spread["kaiming"][0] > 1.0
    assert spread["default"][1] < 0.01 and spread["kaiming"][1] > 10 * spread["default"][1]


@pytest.mark.parametrize("model, message", [
    ({"spatial_pool": "mean"}, r"model\.spatial_pool must be 'avg' or 'max'"),
    ({"init": "xavier"}, r"model\.init must be 'default' or 'kaiming'"),
    ({"init": "kaiming", "pretrained": True}, r"model\.init only sets how a random backbone"),
])
def test_bad_model_keys_are_named(model: dict, message: str) -> None:
    raw = copy.deepcopy(raw_params())
    raw["model"].update(model)
    with pytest.raises(ParamsError, match=message):
        params_from_dict(raw)


@pytest.mark.parametrize("name, init", [("phantoms-256", "kaiming"),
                                        ("phantoms-256-pretrained", "default")])
def test_256_recipes_resolve(name: str, init: str) -> None:
    recipe = load_recipe(name, PROJECT)
    params = params_from_dict(apply_overrides(raw_params(), recipe["params"]))
    assert (params.synthesize.image_size, params.prepare.image_size) == (256, 256)
    assert (params.model.spatial_pool, params.model.init) == ("max", init)
    assert params.model.pretrained == (init == "default")
