"""Check a dataset against the MURA-v1.1 contract and summarise it.

:func:`validate_dataset` reads both splits with :func:`mrnet.mura.data.read_split` (layout,
CSV rows, labels against folder names, every listed image present, every study with an image)
and opens every PNG's header (readable, a PNG, at least 8 px a side) without decoding pixels.
The first problem is a :class:`~mrnet.core.errors.DatasetError` naming the file (and CSV line).
A patient in both splits is an error too: the splits must not share people.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mrnet.core.errors import DatasetError
from mrnet.mura import SPLITS, STUDY_TYPES
from mrnet.mura.data import image_info, read_split

log = logging.getLogger(__name__)


def validate_dataset(root: str | Path) -> dict[str, Any]:
    """Validate ``root`` (a MURA-v1.1 folder); returns the report written to dataset.json.

    Report per split: studies, images, abnormal study fraction, views per study (min, mean,
    max), image height/width range, PNG modes, and per study type the studies, abnormal
    studies, and abnormal/normal images (the counts behind the loss weights).
    """
    report: dict[str, Any] = {}
    patients: dict[str, set[str]] = {}
    for split in SPLITS:
        data = read_split(root, split)
        s, v = data.studies, data.views
        heights, widths, modes = [], [], Counter()
        for path in tqdm(v["path"].tolist(), desc=f"validate {split}", unit="image",
                         leave=False, disable=len(v) < 500 or None):
            h, w, mode = image_info(path)
            if min(h, w) < 8:
                raise DatasetError(f"{path}: image of {h}x{w} px is too small")
            heights.append(h)
            widths.append(w)
            modes[mode] += 1
        patients[split] = set(s["patient"])
        per_type = {}
        for t in STUDY_TYPES:
            sub = s[s["study_type"] == t]
            per_type[t] = {"studies": int(len(sub)), "abnormal_studies": int(sub["label"].sum()),
                           "abnormal_images": int(sub.loc[sub["label"] == 1, "n_views"].sum()),
                           "normal_images": int(sub.loc[sub["label"] == 0, "n_views"].sum())}
        report[split] = {
            "studies": int(len(s)), "images": int(len(v)),
            "abnormal_fraction": round(float(s["label"].mean()), 4),
            "views_min": int(s["n_views"].min()), "views_max": int(s["n_views"].max()),
            "views_mean": round(float(s["n_views"].mean()), 3),
            "height_min": min(heights), "height_max": max(heights),
            "width_min": min(widths), "width_max": max(widths),
            "modes": dict(sorted(modes.items())), "per_type": per_type,
        }
    shared = sorted(patients["train"] & patients["valid"])
    if shared:
        raise DatasetError(f"{root}: patient {shared[0]} is in both train and valid "
                           f"({len(shared)} shared); the splits must not share patients")
    return report
