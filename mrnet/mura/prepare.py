"""The prepared cache: every view of a split decoded, made grey and resized once.

``OUT/{split}.npy`` holds every view, uint8 (views, S, S), grouped by study; ``OUT/{split}.json``
the study ids, types, labels, each study's first view and view count, and the view names.
Training reads views straight from it and never decodes a PNG again. As in the paper, every
view is scaled to a square whatever its aspect ratio.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from mrnet.errors import DatasetError
from mrnet.io import atomic_path, write_json
from mrnet.mura import SPLITS
from mrnet.mura.data import load_view, read_split
from mrnet.prepare import resize_volume

log = logging.getLogger(__name__)


class PreparedStudies(NamedTuple):
    """One split of the cache: a row per study, views packed by study."""

    studies: pd.DataFrame  # study_id, split, study_type, label, n_views, offset
    views: np.ndarray  # (total views, S, S) uint8, memory-mapped
    view_names: list[str]  # "image1", ... per view, in cache order


def resize_view(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (H, W) view resized to (size, size), antialiased bilinear."""
    return resize_volume(image[None], size)[0]


def prepare_split(root: str | Path, split: str, out: str | Path, image_size: int) -> dict:
    """Write the cache of one split; returns its summary."""
    data = read_split(root, split)
    studies = data.studies
    offsets = np.concatenate([[0], np.cumsum(studies["n_views"])[:-1]]).astype(np.int64)
    total = int(studies["n_views"].sum())
    out = Path(out)
    with atomic_path(out / f"{split}.npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(total, image_size, image_size))
        for i, path in enumerate(tqdm(data.views["path"].tolist(), desc=f"prepare {split}",
                                      unit="view", leave=False)):
            arr[i] = resize_view(load_view(path), image_size)
        arr.flush()
        del arr
    index = {"study_ids": studies["study_id"].tolist(),
             "study_types": studies["study_type"].tolist(),
             "labels": studies["label"].astype(int).tolist(),
             "offsets": offsets.tolist(), "counts": studies["n_views"].astype(int).tolist(),
             "view_names": data.views["view"].tolist(), "image_size": image_size}
    write_json(out / f"{split}.json", index)
    return {"studies": len(studies), "views": total}


def prepare(root: str | Path, out: str | Path, image_size: int) -> dict:
    """Write the cache of both splits under ``out``."""
    return {split: prepare_split(root, split, out, image_size) for split in SPLITS}


def load_prepared(out: str | Path, split: str) -> PreparedStudies:
    """Open the cache of one split (views memory-mapped)."""
    index_path, data_path = Path(out) / f"{split}.json", Path(out) / f"{split}.npy"
    for p in (index_path, data_path):
        if not p.is_file():
            raise DatasetError(f"{p}: prepared cache not found; run "
                               "`dvc repro mura/dvc.yaml:prepare`")
    index = json.loads(index_path.read_text())
    views = np.load(data_path, mmap_mode="r")
    counts = np.asarray(index["counts"], dtype=np.int64)
    if counts.sum() != views.shape[0]:
        raise DatasetError(f"{data_path}: holds {views.shape[0]} views but {index_path} lists "
                           f"{counts.sum()}; rerun `dvc repro mura/dvc.yaml:prepare`")
    studies = pd.DataFrame({"study_id": pd.Series(index["study_ids"], dtype=object),
                            "split": split, "study_type": index["study_types"],
                            "label": np.asarray(index["labels"], dtype=np.int64),
                            "n_views": counts,
                            "offset": np.asarray(index["offsets"], dtype=np.int64)})
    return PreparedStudies(studies, views, list(index["view_names"]))
