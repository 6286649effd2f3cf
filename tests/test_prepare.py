"""The prepared cache round-trips, and pretrained weights never download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrnet import SPLITS
from mrnet.core.errors import WeightsNotFoundError
from mrnet.core.packed import resize_volume
from mrnet.data.prepare import load_prepared, prepare_plane
from mrnet.data.reader import load_series
from mrnet.model import MRNet, MRNetConfig


@pytest.mark.parametrize("size", [32, 64])
def test_cache_round_trips(tiny_dataset: Path, tmp_path: Path, size: int) -> None:
    prepare_plane(tiny_dataset, "coronal", tmp_path, size)
    for split in SPLITS:
        cache = load_prepared(tmp_path, "coronal", split)
        files = sorted((tiny_dataset / split / "coronal").glob("*.npy"))
        assert cache.case_ids == [f.stem for f in files]
        for i, f in enumerate(files):
            expected = resize_volume(load_series(f), size)
            got = cache.exam(i)
            assert got.dtype == np.uint8 and got.shape == expected.shape
            assert np.array_equal(got, expected)
            if size == 32:  # the tiny phantoms are 32 px: no resize, the raw series back
                assert np.array_equal(got, load_series(f))


def test_resize_keeps_dtype_and_range() -> None:
    vol = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    out = resize_volume(vol, 64)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(vol.mean())) < 2.0


def test_pretrained_without_cached_weights_names_the_file(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"alexnet-owt-7be5be79\.pth does not exist"):
        MRNet(MRNetConfig("alexnet"), pretrained=True)
