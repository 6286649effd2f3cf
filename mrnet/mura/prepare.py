"""The prepared cache: every view of a split decoded, made grey and resized once.

``OUT/{split}.npy`` holds every view, uint8 (views, S, S), grouped by study; ``OUT/{split}.json``
the study ids, types, labels, each study's first view and view count, and the view names.
Training reads views straight from it and never decodes a PNG again. As in the paper, every
view is scaled to a square whatever its aspect ratio.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from mrnet.core.packed import PackedSet, read_packed, resize_volume, write_packed
from mrnet.mura import SPLITS
from mrnet.mura.data import load_view, read_split

log = logging.getLogger(__name__)

RERUN = "dvc repro mura/dvc.yaml:prepare"


class PreparedStudies(NamedTuple):
    """One split of the cache: a row per study, views packed by study."""

    studies: pd.DataFrame  # study_id, split, study_type, label, n_views, offset
    views: np.ndarray  # (total views, S, S) uint8, memory-mapped
    view_names: list[str]  # "image1", ... per view, in cache order


def resize_view(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 (H, W) view resized to (size, size), antialiased bilinear."""
    return resize_volume(image[None], size)[0]


def prepare_split(root: str | Path, split: str, out: str | Path, image_size: int) -> dict:
    """Write the cache of one split (the packed cache of :mod:`mrnet.core.packed`, with each
    study's type and label and each view's name); returns its summary."""
    data = read_split(root, split)
    studies = data.studies
    views = (resize_view(load_view(path), image_size)[None]
             for path in data.views["path"].tolist())
    columns = {"study_types": studies["study_type"].tolist(),
               "labels": studies["label"].astype(int).tolist(),
               "view_names": data.views["view"].tolist()}
    summary = write_packed(out, split, studies["study_id"].tolist(),
                           studies["n_views"].astype(int).tolist(), image_size, views, columns,
                           desc=f"prepare {split}", n_blocks=len(data.views))
    return {"studies": summary["cases"], "views": summary["slices"]}


def prepare(root: str | Path, out: str | Path, image_size: int) -> dict:
    """Write the cache of both splits under ``out``."""
    return {split: prepare_split(root, split, out, image_size) for split in SPLITS}


def load_prepared(out: str | Path, split: str) -> PreparedStudies:
    """Open the cache of one split (views memory-mapped)."""
    packed = read_packed(out, split, RERUN)
    cols = packed.columns
    studies = pd.DataFrame({"study_id": pd.Series(packed.case_ids, dtype=object),
                            "split": split, "study_type": cols["study_types"],
                            "label": np.asarray(cols["labels"], dtype=np.int64),
                            "n_views": packed.counts, "offset": packed.offsets})
    return PreparedStudies(studies, packed.slices, list(cols["view_names"]))


def study_set(prepared: PreparedStudies, device: torch.device | str = "cpu") -> PackedSet:
    """A prepared split as a :class:`~mrnet.core.packed.PackedSet` of studies (labels, study
    types as ``groups``), views moved to ``device`` in one read."""
    s = prepared.studies
    return PackedSet(torch.from_numpy(np.array(prepared.views)).to(device),
                     torch.tensor(s["offset"].to_numpy(np.int64)),
                     torch.tensor(s["n_views"].to_numpy(np.int64)),
                     s["study_id"].astype(str).tolist(),
                     torch.tensor(s["label"].to_numpy(np.float32)), s["study_type"].tolist())
