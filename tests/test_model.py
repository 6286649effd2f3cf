"""The MRNet module: shapes, pooling over slices, packed batches, preprocessing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from mrnet.core.backbones import AlexNet, GreyStemConv2d, make_backbone, segment_pool
from mrnet.model import PIXEL_MEAN, PIXEL_STD, MRNet, MRNetConfig, normalize
from mrnet.mura.model import IMAGENET_MEAN, IMAGENET_STD, imagenet_normalize


@pytest.fixture(scope="module")
def model() -> MRNet:
    torch.manual_seed(0)
    return MRNet(MRNetConfig("alexnet")).eval()


@pytest.mark.parametrize("slices", [1, 2, 40])
@pytest.mark.parametrize("size", [64, 256])
def test_forward_shape(model: MRNet, slices: int, size: int) -> None:
    x = torch.randn(slices, size, size)
    with torch.inference_mode():
        out = model(x, torch.tensor([slices]))
    assert out.shape == (1,)
    assert torch.isfinite(out).all()


def test_max_over_slices_ignores_slice_order(model: MRNet) -> None:
    x = torch.randn(7, 64, 64)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = model(x), model(x[perm])
    assert torch.allclose(a, b, atol=1e-6)
    # ... but the slices do matter: replacing one changes the logit.
    y = x.clone()
    y[3] = 5 * torch.randn(64, 64)
    with torch.inference_mode():
        assert not torch.allclose(a, model(y), atol=1e-6)


def test_packed_exams_equal_each_exam_alone(model: MRNet) -> None:
    counts = [3, 5, 1, 4]
    vols = [torch.randint(0, 256, (c, 64, 64), dtype=torch.uint8) for c in counts]
    c = torch.tensor(counts)
    with torch.inference_mode():
        packed = model(normalize(torch.cat(vols), c), c)
        alone = torch.cat([model(normalize(v, torch.tensor([len(v)])), torch.tensor([len(v)]))
                           for v in vols])
    assert packed.shape == (4,)
    assert torch.allclose(packed, alone, atol=1e-5)


def test_segment_pool_max_and_mean() -> None:
    x = torch.tensor([[1.0, -1.0], [3.0, 0.0], [2.0, 5.0]])
    counts = torch.tensor([2, 1])
    assert torch.equal(segment_pool(x, counts, "max"), torch.tensor([[3.0, 0.0], [2.0, 5.0]]))
    assert torch.allclose(segment_pool(x, counts, "mean"), torch.tensor([[2.0, -0.5], [2.0, 5.0]]))


def test_normalize_scales_each_exam_by_its_own_range() -> None:
    a = torch.full((2, 4, 4), 10, dtype=torch.uint8)
    a[0, 0, 0] = 20
    b = torch.full((1, 4, 4), 100, dtype=torch.uint8)
    b[0, 0, 0] = 200
    out = normalize(torch.cat([a, b]), torch.tensor([2, 1]))
    # Both exams span [min, max] → the same normalised range despite different raw values.
    assert torch.allclose(out[:2].amin(), out[2:].amin())
    assert torch.allclose(out[:2].amax(), out[2:].amax())
    assert out[1].amax() == out[:2].amin()  # slice 1 of exam a is all at the exam's minimum


def test_normalisation_constants_are_the_mrnet_authors() -> None:
    # Checkpoints were trained with these; a change silently shifts every probability.
    assert (PIXEL_MEAN, PIXEL_STD) == (58.09, 49.73)
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # ... and they are the ones applied: an exam's minimum, maximum and midpoint by hand.
    exam = torch.tensor([[[3, 103], [53, 53]]], dtype=torch.uint8)
    out = normalize(exam, torch.tensor([1]))
    want = torch.tensor([[[-58.09, 255 - 58.09], [127.5 - 58.09, 127.5 - 58.09]]]) / 49.73
    assert torch.allclose(out, want, atol=1e-5)
    rgb = imagenet_normalize(torch.tensor([[[0, 255, 51]]], dtype=torch.uint8))
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        assert rgb[0, c, 0].tolist() == pytest.approx([-mean / std, (1 - mean) / std,
                                                      (0.2 - mean) / std], rel=1e-6)


@pytest.mark.parametrize("backbone", ["alexnet", "resnet18", "densenet121"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_grey_stem_equals_the_grey_slice_repeated_in_rgb(backbone: str, channels_last: bool) -> None:
    """One grey channel against the summed kernels gives the paper's 3-channel computation:
    same features and the same gradients of the (out, 3, k, k) stem weights. In float64: in
    float32 DenseNet's depth turns rounding into near-tie flips of max-pools and ReLUs."""
    torch.manual_seed(0)
    features, _ = make_backbone(backbone)
    features = features.double()
    if channels_last:
        features = features.to(memory_format=torch.channels_last)
    features.eval()
    stem = next(m for m in features.modules() if isinstance(m, torch.nn.Conv2d))
    assert isinstance(stem, GreyStemConv2d) and stem.weight.shape[1] == 3
    x = torch.randn(3, 1, 64, 64, dtype=torch.float64)
    grads = []
    outs = []
    for inp in (x, x.expand(-1, 3, -1, -1).contiguous()):
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        stem.weight.grad = None
        out = features(inp)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append(stem.weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-10, rtol=1e-10)
    assert torch.allclose(grads[0], grads[1], atol=1e-10, rtol=1e-10)
    assert grads[0].abs().sum() > 0


def test_grey_stem_keeps_torchvision_weight_names() -> None:
    """ImageNet weights and older checkpoints load into the grey-stem model unchanged."""
    net = torchvision.models.alexnet(weights=None)
    features, _ = make_backbone("alexnet")
    features.load_state_dict(net.features.state_dict())
    assert torch.equal(features[0].weight, net.features[0].weight)


def test_grey_stem_keeps_channels_last_layout() -> None:
    """A one-channel input is ambiguous between layouts; the stem's output must still be
    channels_last when the model is (else every later layer converts or runs NCHW)."""
    features, _ = make_backbone("alexnet")
    features = features.to(memory_format=torch.channels_last)
    out = features[0](torch.randn(2, 1, 64, 64))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


def test_alexnet_is_torchvisions_without_importing_it() -> None:
    """The project's AlexNet gives torchvision's weights for the same seed and leaves the RNG
    where torchvision's leaves it (the model's head is drawn next), and its stage processes do
    not import torchvision."""
    torch.manual_seed(7)
    ours = AlexNet().state_dict()
    after_ours = torch.get_rng_state()
    torch.manual_seed(7)
    theirs = torchvision.models.alexnet(weights=None).state_dict()
    assert torch.equal(after_ours, torch.get_rng_state())
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert _printed("import sys, stages.train, stages.extract; from mrnet.core.backbones import "
                    "make_backbone; make_backbone('alexnet'); print('torchvision' in sys.modules, "
                    "'sklearn' in sys.modules)") == ["False", "False"]


def test_the_ensemble_stage_does_not_import_torch() -> None:
    """Logistic regression over three probability tables needs no torch: its three stage
    processes start without paying for the import."""
    assert _printed("import sys, stages.ensemble; print('torch' in sys.modules)") == ["False"]


def _printed(code: str) -> list[str]:
    """The words ``code`` prints when run by a fresh interpreter in the project root (a fresh
    process, so ``sys.modules`` holds only what ``code`` imported)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    return out.stdout.split()
