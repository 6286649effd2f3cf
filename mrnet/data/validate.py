"""Check a dataset against the MRNet-v1.0 contract and summarise it.

:func:`validate_dataset` raises :class:`~mrnet.core.errors.DatasetError` on the first breach, with
one line that names the file or case id and what is wrong:

- the root, a split folder (``train/``, ``valid/``), a plane folder or a label CSV is missing;
- a label CSV has a header row, a malformed row, a label other than 0/1, a duplicated case id,
  or a case id that is not 4 zero-padded digits; the three task CSVs of a split list different
  cases; a case id is in both splits;
- a plane folder holds anything but ``NNNN.npy`` series (hidden files such as ``.DS_Store``
  are ignored: they are what copying data on macOS leaves behind, and no reader lists them);
- a case of a CSV has no series in some plane, or a series has no label in the CSVs;
- a series is not a readable ``.npy`` (random bytes, a cut header), its size on disk does not
  match its header (truncated, or trailing bytes), or it is not a 3-D uint8 array with at least
  one slice.

Series are checked from their headers and file sizes only; no volume is loaded, so checking
the real dataset (3,750 files) takes seconds and little memory.

Two things are allowed on purpose:

- Height and width may differ between series (real MRNet is all 256×256): the prepare stage
  resizes every slice to ``prepare.image_size``, so any size trains. The report gives the
  range of sizes seen and ``size`` ("HxW", or "mixed"), so a surprise shows up in
  ``dvc metrics show``.
- An exam positive for ACL or meniscal tear but negative for abnormal breaks the label
  hierarchy of MRNet, but real or relabelled data may contain it, and each task is trained on
  its own labels. It is logged as a WARNING naming the case ids and counted in the report
  (``tear_without_abnormal``) rather than refused.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mrnet import PLANES, SPLITS, TASKS
from mrnet.core.errors import DatasetError
from mrnet.data.reader import check_series, label_csv, list_exams, read_labels, read_series_header

log = logging.getLogger(__name__)

CASE_ID = re.compile(r"\d{4}")
SERIES_NAME = re.compile(r"(\d{4})\.npy")
# Below this many files a progress bar is noise.
PROGRESS_MIN_FILES = 500
# How many case ids a warning names before it only counts the rest.
MAX_IDS_SHOWN = 20


def _data_offset(path: Path) -> int:
    """Byte offset of the array data in a ``.npy`` whose header has already been read."""
    with path.open("rb") as fh:
        prefix = fh.read(12)
    # Format 1.0 stores the header length in 2 bytes; 2.0 and 3.0 in 4 bytes.
    if prefix[6] == 1:
        return 10 + int.from_bytes(prefix[8:10], "little")
    return 12 + int.from_bytes(prefix[8:12], "little")


def check_series_file(path: str | Path) -> tuple[int, ...]:
    """Check one series from its header and size on disk; returns its shape.

    Raises:
        DatasetError: the file is unreadable, truncated or padded, or not 3-D uint8 with at
            least one slice.
    """
    path = Path(path)
    shape, dtype = read_series_header(path)
    check_series(path, shape, dtype)
    expected = _data_offset(path) + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise DatasetError(f"{path}: truncated .npy file: {actual} bytes, expected {expected} "
                           f"for a {dtype} array of shape {shape}")
    if actual > expected:
        raise DatasetError(f"{path}: {actual - expected} unexpected bytes after the array data "
                           f"(expected {expected} bytes for shape {shape}); the file is corrupt")
    return shape


def _check_layout(root: Path) -> None:
    """Every split folder, plane folder and label CSV exists."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; data.root in params.yaml must "
                           "name the folder that holds train/, valid/ and the label CSVs")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DatasetError(f"{root / split}: split folder not found "
                               f"(an MRNet-v1.0 root holds {', '.join(SPLITS)})")
        for plane in PLANES:
            if not (root / split / plane).is_dir():
                raise DatasetError(f"{root / split / plane}: plane folder not found "
                                   f"(each split holds {', '.join(PLANES)})")
        for task in TASKS:
            path = label_csv(root, split, task)
            if not path.is_file():
                raise DatasetError(f"{path}: label CSV not found")


def _check_case_ids(root: Path, split: str) -> None:
    """Every case id of the split's CSVs is 4 zero-padded digits (as the file names are)."""
    for task in TASKS:
        path = label_csv(root, split, task)
        for case_id in read_labels(path).index:
            if not CASE_ID.fullmatch(case_id):
                raise DatasetError(f"{path}: case id {case_id!r} is not 4 zero-padded digits "
                                   "(like 0007); was the CSV rewritten by a reader that "
                                   "dropped leading zeros?")


def _plane_series(root: Path, split: str, plane: str) -> dict[str, Path]:
    """{case id: path} of the series in one plane folder, refusing any foreign entry."""
    folder = root / split / plane
    series: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        match = SERIES_NAME.fullmatch(entry.name)
        if match is None or not entry.is_file():
            raise DatasetError(f"{entry}: unexpected {'file' if entry.is_file() else 'entry'} "
                               "in a plane folder; it may hold only NNNN.npy series named by "
                               "4-digit case id")
        series[match.group(1)] = entry
    return series


def _summarise_plane(shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    slices = np.array([s[0] for s in shapes])
    heights = [s[1] for s in shapes]
    widths = [s[2] for s in shapes]
    sizes = {(s[1], s[2]) for s in shapes}
    return {
        "exams": len(shapes),
        "slices_min": int(slices.min()),
        "slices_median": float(np.median(slices)),
        "slices_max": int(slices.max()),
        "height_min": min(heights),
        "height_max": max(heights),
        "width_min": min(widths),
        "width_max": max(widths),
        # A string, not a list: `dvc metrics show` drops lists but shows strings.
        "size": "{}x{}".format(*sizes.pop()) if len(sizes) == 1 else "mixed",
    }


def _ids_text(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_IDS_SHOWN])
    return shown if len(ids) <= MAX_IDS_SHOWN else f"{shown} (+{len(ids) - MAX_IDS_SHOWN} more)"


def validate_dataset(root: str | Path) -> dict[str, Any]:
    """Check the dataset at ``root`` against the MRNet-v1.0 contract and summarise it.

    Args:
        root: the folder that holds ``train/``, ``valid/`` and the six label CSVs.

    Returns:
        The report, one entry per split: ``exams``; ``tear_without_abnormal`` (cases positive
        for ACL or meniscus but negative for abnormal); per task ``positives`` and
        ``prevalence`` (4 decimals); per plane ``exams``, ``slices_min/median/max``,
        ``height_min/max``, ``width_min/max`` and ``size``.

    Raises:
        DatasetError: on the first breach of the contract (see the module docstring).
    """
    root = Path(root)
    _check_layout(root)
    exams = {}
    for split in SPLITS:
        _check_case_ids(root, split)
        exams[split] = list_exams(root, split)  # joins the task CSVs by id and cross-checks them
    first, second = SPLITS[0], SPLITS[1]
    shared = sorted({e.case_id for e in exams[first]} & {e.case_id for e in exams[second]})
    if shared:
        raise DatasetError(f"case {shared[0]} is listed in both {label_csv(root, first, TASKS[0])} "
                           f"and {label_csv(root, second, TASKS[0])}; the splits must not share "
                           "exams")

    # Names and pairing of every split and plane first, so a missing or stray file is
    # reported before the (slower) per-file checks.
    to_check: list[tuple[str, str, Path]] = []
    for split in SPLITS:
        labelled = {e.case_id for e in exams[split]}
        csv_name = label_csv(root, split, TASKS[0]).name
        for plane in PLANES:
            series = _plane_series(root, split, plane)
            missing = sorted(labelled - set(series))
            if missing:
                cid = missing[0]
                raise DatasetError(f"{root / split / plane / f'{cid}.npy'}: series not found; "
                                   f"case {cid} is listed in {csv_name} but has no {plane} "
                                   f"series ({len(missing)} case(s) missing in {split}/{plane})")
            unlabelled = sorted(set(series) - labelled)
            if unlabelled:
                cid = unlabelled[0]
                raise DatasetError(f"{series[cid]}: case {cid} has no label in the {split} CSVs "
                                   f"({csv_name} …); every series needs a labelled case")
            to_check.extend((split, plane, series[e.case_id]) for e in exams[split])

    shapes: dict[tuple[str, str], list[tuple[int, ...]]] = {}
    bar = tqdm(to_check, desc="validate", unit="file", leave=False,
               disable=None if len(to_check) >= PROGRESS_MIN_FILES else True)
    for split, plane, path in bar:
        shapes.setdefault((split, plane), []).append(check_series_file(path))

    report: dict[str, Any] = {}
    for split in SPLITS:
        split_exams = exams[split]
        n = len(split_exams)
        odd = [e.case_id for e in split_exams
               if e.labels["abnormal"] == 0 and (e.labels["acl"] == 1 or e.labels["meniscus"] == 1)]
        if odd:
            log.warning("%s: %d case(s) positive for ACL or meniscal tear but negative for "
                        "abnormal: %s (kept; counted as %s.tear_without_abnormal)",
                        split, len(odd), _ids_text(odd), split)
        entry: dict[str, Any] = {"exams": n, "tear_without_abnormal": len(odd)}
        for task in TASKS:
            positives = sum(e.labels[task] for e in split_exams)
            entry[task] = {"positives": positives, "prevalence": round(positives / n, 4)}
        for plane in PLANES:
            entry[plane] = _summarise_plane(shapes[(split, plane)])
        report[split] = entry
    sizes = {report[s][p]["size"] for s in SPLITS for p in PLANES}
    if len(sizes) > 1 or "mixed" in sizes:
        log.info("series sizes differ across the dataset (%s); the prepare stage resizes them",
                 ", ".join(sorted(sizes)))
    return report
