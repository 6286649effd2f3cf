"""The MRNet module: shapes, pooling over slices, packed batches, preprocessing."""

from __future__ import annotations

import pytest
import torch

from mrnet.model import MRNet, MRNetConfig, normalize, segment_pool


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
