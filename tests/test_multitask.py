"""Model variants: backbones, slice pooling, and the multitask three-plane network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tmp_params

from mrnet import PLANES, TASKS
from mrnet.core.backbones import make_backbone
from mrnet.core.tables import read_probs, rows
from mrnet.core.trainer import weighted_bce
from mrnet.core.weights import BACKBONES
from mrnet.data.prepare import prepare_plane
from mrnet.model import MRNet, MRNetConfig, MultitaskMRNet
from mrnet.training.multitask import multitask_loss, train_multitask

WIDTHS = {"alexnet": 256, "resnet18": 512, "resnet50": 2048, "vgg16_bn": 512,
          "densenet121": 1024, "densenet169": 1664}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_forward_and_width(backbone: str) -> None:
    torch.manual_seed(0)
    model = MRNet(MRNetConfig(backbone)).eval()
    assert model.width == WIDTHS[backbone] == make_backbone(backbone)[1]
    x = torch.randn(5, 64, 64)
    with torch.inference_mode():
        out = model(x, torch.tensor([2, 3]))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_mean_slice_pool_differs_from_max() -> None:
    torch.manual_seed(0)
    mx = MRNet(MRNetConfig("alexnet", "max")).eval()
    mean = MRNet(MRNetConfig("alexnet", "mean")).eval()
    mean.load_state_dict(mx.state_dict())
    x = torch.randn(6, 64, 64)
    with torch.inference_mode():
        a, b = mx(x), mean(x)
        single = mx(x[:1])
    assert not torch.allclose(a, b)
    with torch.inference_mode():  # with one slice, max and mean agree
        assert torch.allclose(single, mean(x[:1]), atol=1e-6)


def test_multitask_forward_with_different_slice_counts_per_plane() -> None:
    torch.manual_seed(0)
    model = MultitaskMRNet(MRNetConfig("alexnet"), PLANES).eval()
    counts = {"axial": [3, 1], "coronal": [2, 4], "sagittal": [5, 2]}
    inputs = {p: (torch.randn(sum(c), 64, 64), torch.tensor(c)) for p, c in counts.items()}
    with torch.inference_mode():
        out = model(inputs)
    assert out.shape == (2, len(TASKS))
    assert model.width == 3 * 256


def test_multitask_loss_is_mean_of_weighted_task_losses() -> None:
    logits = torch.tensor([[0.2, -1.0, 1.5], [-0.3, 0.8, 0.0], [1.1, 0.4, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    weights = [0.25, 4.0, 1.5]
    expected = sum(weighted_bce(logits[:, t], labels[:, t], w)
                   for t, w in enumerate(weights)) / 3
    assert multitask_loss(logits, labels, weights).item() == pytest.approx(expected.item())


def test_train_multitask_writes_checkpoint_and_tables(tiny_dataset: Path, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    for plane in PLANES:
        prepare_plane(tiny_dataset, plane, prepared, 64)
    params = tmp_params(tmp_path, tiny_dataset, train={"epochs": 1, "exams_per_batch": 3})
    params = params.__class__(**{
        **params.__dict__,
        "prepare": params.prepare.__class__(str(prepared), 64),
        "multitask": params.multitask.__class__(True, str(tmp_path / "mt"), {"lr": 3e-4}),
    })
    summary = train_multitask(params, live_dir=False)
    assert summary["epochs_run"] == 1
    ckpt = torch.load(tmp_path / "mt" / "model.pt", weights_only=True)
    assert ckpt["config"]["planes"] == list(PLANES) and ckpt["config"]["train"]["lr"] == 3e-4
    for task in TASKS:
        valid = rows(read_probs(tmp_path / "mt" / f"multitask-{task}.csv"), "valid")
        assert len(valid) == 4 and valid["prob"].between(0, 1).all()
