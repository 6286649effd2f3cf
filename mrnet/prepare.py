"""The prepared cache: each split × plane converted once to the training resolution.

``OUT/{plane}/{split}.npy`` holds every exam's slices concatenated, uint8 (total, S, S), and
``OUT/{plane}/{split}.json`` the case ids with each exam's offset and slice count. Epochs read
slices straight from it (memory-mapped, or resident on the device) and never decode or
resize again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mrnet import SPLITS
from mrnet.data import check_series, load_series, read_series_header
from mrnet.errors import DatasetError
from mrnet.io import atomic_path, write_json

log = logging.getLogger(__name__)


class PreparedSplit(NamedTuple):
    """One split × plane of the cache."""

    case_ids: list[str]
    offsets: np.ndarray  # (N,) int64, first slice of each exam
    counts: np.ndarray  # (N,) int64, slices of each exam
    slices: np.ndarray  # (total, S, S) uint8, memory-mapped

    def exam(self, i: int) -> np.ndarray:
        """Slices of exam ``i`` (a view)."""
        return self.slices[self.offsets[i]:self.offsets[i] + self.counts[i]]


def resize_volume(volume: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (S, H, W) volume to (S, size, size) with antialiased bilinear resampling."""
    if volume.shape[1] == size and volume.shape[2] == size:
        return np.ascontiguousarray(volume, dtype=np.uint8)
    x = torch.from_numpy(np.asarray(volume, dtype=np.float32)).unsqueeze(1)
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def prepare_split(root: str | Path, split: str, plane: str, out_dir: str | Path,
                  image_size: int) -> dict:
    """Write the cache of one split × plane; returns its summary."""
    folder = Path(root) / split / plane
    if not folder.is_dir():
        raise DatasetError(f"{folder}: plane folder not found")
    # Exams come from the plane's own files so this cache does not depend on any label CSV;
    # labels are joined to it by case id at training time.
    paths = sorted(folder.glob("*.npy"))
    if not paths:
        raise DatasetError(f"{folder}: no .npy series")
    case_ids = [p.stem for p in paths]
    shapes = []
    for path in paths:
        shape, dtype = read_series_header(path)
        check_series(path, shape, dtype)
        shapes.append(shape)
    counts = np.array([s[0] for s in shapes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / f"{split}.npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(int(counts.sum()), image_size, image_size))
        for path, off, n in tqdm(list(zip(paths, offsets, counts)),
                                 desc=f"prepare {split}/{plane}", unit="exam", leave=False):
            vol = load_series(path, mmap=True)
            if vol.shape[0] != n:
                raise DatasetError(f"{path}: changed while being read")
            arr[off:off + n] = resize_volume(vol, image_size)
        arr.flush()
        del arr
    index = {"case_ids": case_ids, "offsets": offsets.tolist(),
             "counts": counts.tolist(), "image_size": image_size}
    write_json(out_dir / f"{split}.json", index)
    return {"exams": len(case_ids), "slices": int(counts.sum())}


def prepare_plane(root: str | Path, plane: str, out: str | Path, image_size: int) -> dict:
    """Write the cache of both splits of one plane under ``out/plane``."""
    return {split: prepare_split(root, split, plane, Path(out) / plane, image_size)
            for split in SPLITS}


def load_prepared(out: str | Path, plane: str, split: str) -> PreparedSplit:
    """Open the cache of one split × plane (memory-mapped)."""
    base = Path(out) / plane
    index_path, data_path = base / f"{split}.json", base / f"{split}.npy"
    for p in (index_path, data_path):
        if not p.is_file():
            raise DatasetError(f"{p}: prepared cache not found; run `dvc repro prepare@{plane}`")
    index = json.loads(index_path.read_text())
    slices = np.load(data_path, mmap_mode="r")
    counts = np.asarray(index["counts"], dtype=np.int64)
    if counts.sum() != slices.shape[0]:
        raise DatasetError(f"{data_path}: holds {slices.shape[0]} slices but {index_path} "
                           f"lists {counts.sum()}; rerun `dvc repro prepare@{plane}`")
    return PreparedSplit(case_ids=list(index["case_ids"]),
                         offsets=np.asarray(index["offsets"], dtype=np.int64),
                         counts=counts, slices=slices)
