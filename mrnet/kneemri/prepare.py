"""The KneeMRI cache and what scoring it needs: each series cropped, scaled to 8 bits and
resized once into the packed cache of :mod:`mrnet.core.packed`, and its probability tables
(``case_id,split,label,prob``, :mod:`mrnet.core.tables`) per task.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrnet.config import Params
from mrnet.core.errors import DatasetError
from mrnet.core.io import atomic_dir, write_json
from mrnet.core.packed import PackedSet, read_packed, write_packed
from mrnet.core.stats import sigmoid
from mrnet.kneemri.reader import (DIAGNOSES, KNEEMRI_SPLITS, KNEEMRI_TASKS, PLANE, SPLIT_FOLDERS,
                                  labels_table, list_series, load_series_volume)
from mrnet.model import exam_logits

log = logging.getLogger(__name__)

def prepared_dir(params: Params) -> Path:
    """The KneeMRI cache written by the kneemri_prepare stage."""
    return Path(params.kneemri.out) / "prepared"


def crop_box(shape: tuple[int, int, int], roi: tuple[int, int, int, int, int, int],
             scale: float) -> tuple[slice, slice, slice]:
    """Slices of a square in-plane window centred on the ROI, ``scale`` times its larger side,
    and of the ROI's slice range scaled alike; shifted to stay inside, clipped to the volume.
    """
    n, rows, cols = shape
    x, y, z, h, w, d = roi

    def window(center: float, size: int, length: int) -> slice:
        size = max(1, min(size, length))
        start = int(round(center - size / 2))
        start = min(max(start, 0), length - size)
        return slice(start, start + size)

    side = int(round(scale * max(h, w)))
    depth = int(round(scale * d))
    return (window(z + d / 2, depth, n), window(y + h / 2, side, rows),
            window(x + w / 2, side, cols))


def to_uint8(vol: np.ndarray) -> np.ndarray:
    """Scale a volume linearly from its minimum to its 99.5th percentile onto 0..255 (uint8).

    A percentile, not the maximum, so that a few hot pixels do not darken the whole series.
    """
    v = np.asarray(vol, dtype=np.float32)
    lo = float(v.min())
    hi = float(np.percentile(v, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.rint(np.clip((v - lo) * (255.0 / (hi - lo)), 0.0, 255.0)).astype(np.uint8)


def preprocess(vol: np.ndarray, roi: tuple[int, int, int, int, int, int], crop: str,
               roi_scale: float, image_size: int) -> np.ndarray:
    """A KneeMRI volume as the CNNs see it: cropped (``roi`` or ``full``), scaled to 0..255 and
    resampled in-plane to ``image_size``; uint8 (slices, image_size, image_size)."""
    from mrnet.core.packed import resize_volume  # torch only when volumes are prepared

    if crop == "roi":
        vol = vol[crop_box(vol.shape, roi, roi_scale)]
    elif crop != "full":
        raise ValueError(f"crop must be 'roi' or 'full', got {crop!r}")
    if vol.shape[1] != vol.shape[2]:  # a crop clipped by the border: pad to a square
        side = max(vol.shape[1:])
        pad = ((0, 0), (0, side - vol.shape[1]), (0, side - vol.shape[2]))
        vol = np.pad(vol, pad, mode="edge")
    return resize_volume(to_uint8(vol), image_size)


def prepare_kneemri(root: str | Path, out: str | Path, crop: str, roi_scale: float,
                    image_size: int) -> dict:
    """Validate a KneeMRI folder and cache it at the training resolution.

    Writes, into a temporary sibling renamed onto ``out`` only when every volume passed:

    - ``out/sagittal/{train,valid,test}.npy,.json``: the packed cache of
      :mod:`mrnet.core.packed` (one uint8 array of all slices, case ids with offsets and
      counts);
    - ``out/labels.csv``: :func:`labels_table`;
    - ``out/report.json``: series, dtypes, slice counts and diagnoses per split.

    Returns:
        The report.

    Raises:
        DatasetError: naming the file (or metadata line) of the first problem.
    """
    root, out = Path(root), Path(out)
    series = list_series(root)
    report: dict = {"crop": crop, "roi_scale": roi_scale, "image_size": image_size}
    with atomic_dir(out) as tmp:
        for split in KNEEMRI_SPLITS:
            members = [s for s in series if s.split == split]
            if not members:
                raise DatasetError(f"{root}: no series in the {split} folders "
                                   f"({', '.join(SPLIT_FOLDERS[split])})")
            vols, dtypes, shapes = [], {}, []
            for s in members:
                vol = load_series_volume(s, root)
                dtypes[str(vol.dtype)] = dtypes.get(str(vol.dtype), 0) + 1
                shapes.append(vol.shape)
                vols.append(preprocess(vol, s.roi, crop, roi_scale, image_size))
            counts = np.array([v.shape[0] for v in vols], dtype=np.int64)
            write_packed(tmp / PLANE, split, [s.case_id for s in members], counts, image_size,
                         vols)
            diag = np.array([s.diagnosis for s in members])
            report[split] = {
                "series": len(members),
                "folders": list(SPLIT_FOLDERS[split]),
                "diagnosis": {str(d): int((diag == d).sum()) for d in DIAGNOSES},
                "dtypes": dict(sorted(dtypes.items())),
                "slices_min": int(min(sh[0] for sh in shapes)),
                "slices_max": int(max(sh[0] for sh in shapes)),
                "size": sorted({f"{sh[1]}x{sh[2]}" for sh in shapes}),
                "prepared_slices_min": int(counts.min()),
                "prepared_slices_max": int(counts.max()),
            }
            log.info("%s: %d series (%s), diagnoses %s", split, len(members),
                     ", ".join(SPLIT_FOLDERS[split]), report[split]["diagnosis"])
        with (tmp / "labels.csv").open("w", newline="") as fh:
            labels_table(series).to_csv(fh, index=False, lineterminator="\n")
        write_json(tmp / "report.json", report)
    return report


def load_kneemri_set(prepared: str | Path, split: str, labels: pd.DataFrame,
                     task: str | None, device: torch.device) -> PackedSet:
    """One split of the KneeMRI cache with its ``task`` labels joined by case id."""
    # read_packed names a missing cache file and the stage that writes it.
    ps = read_packed(Path(prepared) / PLANE, split, "dvc repro kneemri_prepare")
    by_id = labels.set_index("case_id")
    missing = [c for c in ps.case_ids if c not in by_id.index]
    if missing:
        raise DatasetError(f"{Path(prepared) / 'labels.csv'}: no label for case {missing[0]} "
                           f"of the {split} cache ({len(missing)} unlabelled)")
    y = None
    if task is not None:
        y = by_id.loc[ps.case_ids, task].astype(np.float32).to_numpy()
    return PackedSet.from_split(ps, y, device)


def labels_of(labels: pd.DataFrame, case_ids: list[str], task: str) -> np.ndarray:
    """0/1 labels of ``task`` for ``case_ids`` from the labels table, joined by case id."""
    return labels.set_index("case_id").loc[case_ids, task].astype(int).to_numpy()


def exam_probs(model: torch.nn.Module, data: PackedSet, device: torch.device, bf16: bool,
               batch: int) -> np.ndarray:
    """Probabilities of every series of ``data`` (the one float64 sigmoid of the project)."""
    return sigmoid(exam_logits(model, data, device, batch, bf16))


def task_tables(case_ids: list[str], split: str, labels: pd.DataFrame,
            probs: np.ndarray) -> dict[str, pd.DataFrame]:
    """One table per KneeMRI task for the same scores."""
    return {task: pd.DataFrame({"case_id": pd.Series(case_ids, dtype=str), "split": split,
                                "label": labels_of(labels, case_ids, task), "prob": probs})
            for task in KNEEMRI_TASKS}
