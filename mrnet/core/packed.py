"""Packed sets and their cache: the one format every dataset trains from.

A packed split holds the images of many cases (an exam's slices, a study's views) in one uint8
array of shape (total, S, S), case after case, with each case's first image (``offsets``) and
image count (``counts``). On disk it is ``{split}.npy`` (the array) beside ``{split}.json``
(``case_ids``, ``offsets``, ``counts``, ``image_size`` and any per-case or per-image columns
of the dataset). Epochs read images straight from it and never decode or resize again.

In memory a :class:`PackedSet` holds the array as one tensor (host or device) and returns the
packed images of any batch of cases with their counts, which is what every model here takes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mrnet.core.errors import DatasetError
from mrnet.core.io import atomic_path, write_json


class PackedSplit(NamedTuple):
    """One split of a cache, its images memory-mapped."""

    case_ids: list[str]
    offsets: np.ndarray  # (N,) int64, first image of each case
    counts: np.ndarray  # (N,) int64, images of each case
    slices: np.ndarray  # (total, S, S) uint8, memory-mapped
    columns: dict[str, list]  # the dataset's further columns (e.g. MURA's study types)

    def exam(self, i: int) -> np.ndarray:
        """Images of case ``i`` (a view)."""
        return self.slices[self.offsets[i]:self.offsets[i] + self.counts[i]]

    def read(self) -> np.ndarray:
        """Every image in one plain read. Copying through the memory map would keep every page
        mapped as well and double the peak resident memory."""
        return np.load(self.slices.filename, allow_pickle=False)


def offsets_of(counts: np.ndarray | Sequence[int]) -> np.ndarray:
    """Each case's first image from the image counts of consecutive cases."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def resize_volume(volume: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (S, H, W) volume to (S, size, size) with antialiased bilinear resampling."""
    if volume.shape[1] == size and volume.shape[2] == size:
        return np.ascontiguousarray(volume, dtype=np.uint8)
    x = torch.from_numpy(np.asarray(volume, dtype=np.float32)).unsqueeze(1)
    y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def write_packed(folder: str | Path, split: str, case_ids: Sequence[str],
                 counts: Sequence[int], image_size: int, blocks: Iterable[np.ndarray],
                 columns: dict[str, list] | None = None, desc: str | None = None,
                 n_blocks: int | None = None) -> dict:
    """Write one split of a cache, each file atomically.

    Args:
        counts: images of each case, in order.
        blocks: the images in cache order, as uint8 (n, S, S) arrays (any n) whose total is
            ``sum(counts)``; a producer may raise to stop the write (nothing is left behind).
        columns: the dataset's further columns, stored in the index as they are.
        desc, n_blocks: the progress bar's label and length (default: one block per case).
    Returns:
        {"cases", "slices"}.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    folder = Path(folder)
    with atomic_path(folder / f"{split}.npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(total, image_size, image_size))
        at = 0
        for block in tqdm(blocks, desc=desc, total=n_blocks or len(counts), leave=False,
                          disable=desc is None or None):
            arr[at:at + len(block)] = block
            at += len(block)
        if at != total:
            raise DatasetError(f"{folder / split}: {at} images written for {total} listed")
        arr.flush()
        del arr
    index = {"case_ids": list(case_ids), "offsets": offsets_of(counts).tolist(),
             "counts": counts.tolist(), "image_size": image_size, **(columns or {})}
    write_json(folder / f"{split}.json", index)
    return {"cases": len(case_ids), "slices": total}


def read_packed(folder: str | Path, split: str, rerun: str) -> PackedSplit:
    """Open one split of a cache (images memory-mapped).

    Args:
        rerun: the command that writes this cache, named in the errors.
    Raises:
        DatasetError: a file is missing, or the index does not match the array.
    """
    folder = Path(folder)
    index_path, data_path = folder / f"{split}.json", folder / f"{split}.npy"
    for p in (index_path, data_path):
        if not p.is_file():
            raise DatasetError(f"{p}: prepared cache not found; run `{rerun}`")
    index = json.loads(index_path.read_text())
    slices = np.load(data_path, mmap_mode="r")
    counts = np.asarray(index["counts"], dtype=np.int64)
    if counts.sum() != slices.shape[0]:
        raise DatasetError(f"{data_path}: holds {slices.shape[0]} images but {index_path} "
                           f"lists {counts.sum()}; rerun `{rerun}`")
    known = {"case_ids", "offsets", "counts", "image_size"}
    return PackedSplit(case_ids=[str(c) for c in index["case_ids"]],
                       offsets=np.asarray(index["offsets"], dtype=np.int64), counts=counts,
                       slices=slices, columns={k: v for k, v in index.items() if k not in known})


@dataclass
class PackedSet:
    """Cases whose images live in one uint8 tensor (host or device), addressed by offsets.

    ``labels`` are per case, (N,) or (N, tasks); ``groups`` an optional per-case category
    (MURA's study type).
    """

    slices: torch.Tensor  # (total, H, W) uint8
    offsets: torch.Tensor  # (N,) int64, CPU
    counts: torch.Tensor  # (N,) int64, CPU
    case_ids: list[str]
    labels: torch.Tensor | None = None  # (N,) or (N, T) float32, CPU
    groups: list[str] | None = None

    def __len__(self) -> int:
        return len(self.case_ids)

    @classmethod
    def from_split(cls, split: PackedSplit, labels: np.ndarray | None = None,
                   device: torch.device | str = "cpu",
                   groups: list[str] | None = None) -> "PackedSet":
        """A cache split with its ``labels`` (in case order), images moved to ``device``."""
        return cls(torch.from_numpy(split.read()).to(device), torch.from_numpy(split.offsets),
                   torch.from_numpy(split.counts), list(split.case_ids),
                   None if labels is None else torch.from_numpy(np.asarray(labels)), groups)

    @classmethod
    def from_volumes(cls, volumes: Sequence[np.ndarray], case_ids: Sequence[str],
                     device: torch.device | str = "cpu") -> "PackedSet":
        """Cases held in memory, one uint8 (n, S, S) array each, packed in order."""
        counts = torch.tensor([len(v) for v in volumes], dtype=torch.int64)
        return cls(torch.from_numpy(np.concatenate(volumes)).to(device),
                   torch.cumsum(counts, 0) - counts, counts, list(case_ids))

    def subset(self, index: np.ndarray | Sequence[int]) -> "PackedSet":
        """The cases at ``index``, sharing the image storage."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return PackedSet(self.slices, self.offsets[idx], self.counts[idx],
                         [self.case_ids[i] for i in idx.tolist()],
                         None if self.labels is None else self.labels[idx],
                         None if self.groups is None else [self.groups[i] for i in idx.tolist()])

    def batch(self, index: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed images (sum of counts, H, W) of the cases at ``index`` and their counts."""
        idx = torch.as_tensor(index, dtype=torch.int64)
        parts = [self.slices[o:o + c] for o, c in
                 zip(self.offsets[idx].tolist(), self.counts[idx].tolist())]
        return (torch.cat(parts) if len(parts) > 1 else parts[0]), self.counts[idx]


def join_labels(case_ids: Sequence[str], labels: Any, source: str | Path) -> np.ndarray:
    """float32 labels of ``case_ids`` from a pandas Series or DataFrame indexed by case id,
    joined by id, never by position.

    Raises:
        DatasetError: naming ``source`` and the first case without a label.
    """
    joined = labels.reindex(list(case_ids))
    missing = joined.index[joined.isna().any(axis=1) if joined.ndim > 1 else joined.isna()]
    if len(missing):
        raise DatasetError(f"{source}: no label for case {missing[0]} "
                           f"({len(missing)} prepared exams unlabelled)")
    return joined.to_numpy(dtype=np.float32)
