"""MRNet's prepared cache: each split × plane converted once to the training resolution.

``OUT/{plane}/{split}.npy`` and ``.json`` are the packed cache of :mod:`mrnet.core.packed`:
every exam's slices concatenated, uint8 (total, S, S), and the case ids with each exam's
offset and slice count. Epochs read slices straight from it (memory-mapped, or resident on the
device) and never decode or resize again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet import SPLITS
from mrnet.core.errors import DatasetError
from mrnet.core.packed import PackedSplit, read_packed, resize_volume, write_packed
from mrnet.data.reader import check_series, load_series, read_series_header

log = logging.getLogger(__name__)


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
    shapes = []
    for path in paths:
        shape, dtype = read_series_header(path)
        check_series(path, shape, dtype)
        shapes.append(shape)
    counts = [s[0] for s in shapes]

    def volumes():
        for path, n in zip(paths, counts):
            vol = load_series(path, mmap=True)
            if vol.shape[0] != n:
                raise DatasetError(f"{path}: changed while being read")
            yield resize_volume(vol, image_size)

    summary = write_packed(out_dir, split, [p.stem for p in paths], counts, image_size,
                           volumes(), desc=f"prepare {split}/{plane}")
    return {"exams": summary["cases"], "slices": summary["slices"]}


def prepare_plane(root: str | Path, plane: str, out: str | Path, image_size: int) -> dict:
    """Write the cache of both splits of one plane under ``out/plane``."""
    return {split: prepare_split(root, split, plane, Path(out) / plane, image_size)
            for split in SPLITS}


def load_prepared(out: str | Path, plane: str, split: str) -> PackedSplit:
    """Open the cache of one split × plane (memory-mapped)."""
    return read_packed(Path(out) / plane, split, f"dvc repro prepare@{plane}")
