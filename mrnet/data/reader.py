"""Reader for datasets in the MRNet-v1.0 layout.

```
ROOT/{train,valid}/{axial,coronal,sagittal}/NNNN.npy    uint8 (slices, H, W)
ROOT/{train,valid}-{abnormal,acl,meniscus}.csv          no header: case id, 0/1 label
```
Case ids are strings ("0000"); labels are joined to files by case id, never by position.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from mrnet import PLANES, SPLITS, TASKS
from mrnet.core.errors import DatasetError


class Exam(NamedTuple):
    """One knee exam: its id, split, one series path per plane and one label per task."""

    case_id: str
    split: str
    paths: dict[str, Path]
    labels: dict[str, int]


def label_csv(root: str | Path, split: str, task: str) -> Path:
    """Path of the label CSV of ``split`` and ``task``."""
    return Path(root) / f"{split}-{task}.csv"


def series_path(root: str | Path, split: str, plane: str, case_id: str) -> Path:
    """Path of the ``.npy`` series of one exam in one plane."""
    return Path(root) / split / plane / f"{case_id}.npy"


def _check_name(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def read_labels(path: str | Path) -> pd.Series:
    """Read a header-less ``case_id,label`` CSV into a Series of labels indexed by case id.

    Case ids stay strings ("0000"), in file order; the Series is named after the file's task.

    Raises:
        DatasetError: the file is missing, has a header row, a malformed row, a label other
            than 0/1, or a duplicated case id. The message names the file and the row.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label CSV not found")
    try:
        # dtype=str: "0007" must not become 7. A cell missing from a short row is NaN, which is
        # how fields are counted; one spare column catches a row with a field too many.
        # utf-8-sig: a CSV saved from Excel starts with a byte-order mark that would otherwise
        # glue onto the first case id and read as a header row.
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False,
                          skip_blank_lines=False, encoding="utf-8-sig", engine="python",
                          names=range(3))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: label CSV is empty") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected \d+ fields in line (\d+), saw (\d+)", str(exc))
        where = f"{path}:{found.group(1)}" if found else str(path)
        raise DatasetError(f"{where}: expected 2 columns (case id, label)"
                           + (f", got {found.group(2)}" if found else f" ({exc})")) from None
    raw.index = raw.index + 1  # file line numbers
    n_fields = raw.notna().sum(axis=1)
    raw = raw.fillna("").apply(lambda col: col.str.strip())
    keep = (raw != "").any(axis=1)  # blank lines are harmless
    raw, n_fields = raw[keep], n_fields[keep]
    if raw.empty:
        raise DatasetError(f"{path}: label CSV is empty")
    seen: dict[str, int] = {}
    for lineno, case_id, label, _ in raw.itertuples(name=None):
        row = ",".join(raw.loc[lineno].tolist()[:n_fields[lineno]])
        if n_fields[lineno] != 2:
            raise DatasetError(f"{path}:{lineno}: expected 2 columns (case id, label), "
                               f"got {n_fields[lineno]}: {row!r}")
        if not case_id.isdigit():
            what = "a header row" if lineno == raw.index[0] else "a case id that is not a number"
            raise DatasetError(f"{path}:{lineno}: {what} ({row!r}); "
                               "MRNet label CSVs have no header and numeric case ids")
        if label not in ("0", "1"):
            raise DatasetError(f"{path}:{lineno}: case {case_id} has label {label!r}; "
                               "labels must be 0 or 1")
        if case_id in seen:
            raise DatasetError(f"{path}:{lineno}: case {case_id} is listed twice")
        seen[case_id] = lineno
    labels = pd.Series(raw[1].astype(int).to_numpy(), index=pd.Index(raw[0].tolist(),
                       dtype=object, name="case_id"), name=path.stem.split("-", 1)[-1])
    return labels


def list_exams(root: str | Path, split: str, tasks: Iterable[str] = TASKS,
               planes: Iterable[str] = PLANES) -> list[Exam]:
    """The exams of ``split`` with their series paths and labels, sorted by case id.

    Labels of every task are joined by case id; every task's CSV must list the same cases.
    Series paths are built from the case id; whether the files exist is checked by
    :func:`mrnet.data.validate.validate_dataset`, not here.
    """
    _check_name(split, SPLITS, "split")
    tasks, planes = list(tasks), list(planes)
    for t in tasks:
        _check_name(t, TASKS, "task")
    for p in planes:
        _check_name(p, PLANES, "plane")
    per_task = {t: read_labels(label_csv(root, split, t)) for t in tasks}
    table = pd.concat(per_task, axis=1, join="outer") if per_task else pd.DataFrame()
    if table.isna().to_numpy().any():
        for t in tasks:
            missing = table.index[table[t].isna()]
            if len(missing):
                case = sorted(missing)[0]
                other = next(o for o in tasks if pd.notna(table.at[case, o]))
                raise DatasetError(f"{label_csv(root, split, t)}: case {case} is missing here "
                                   f"but listed in {label_csv(root, split, other).name}")
    ids = sorted(table.index)
    return [
        Exam(case_id=cid, split=split,
             paths={p: series_path(root, split, p, cid) for p in planes},
             labels={t: int(table.at[cid, t]) for t in tasks})
        for cid in ids
    ]


def read_series_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header, without reading the data.

    Raises:
        DatasetError: the file is missing or is not a readable ``.npy``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: series file not found")
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            # Only the public readers: numpy 2 moved the private _read_array_header away.
            # Format 3.0 differs from 2.0 only in the header's text encoding.
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
    return tuple(shape), np.dtype(dtype)


def check_series(path: str | Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise :class:`DatasetError` unless a series is a 3-D uint8 array with >= 1 slice."""
    if dtype != np.uint8:
        raise DatasetError(f"{path}: dtype is {dtype}, expected uint8")
    if len(shape) != 3:
        raise DatasetError(f"{path}: shape is {shape}, expected 3-D (slices, height, width)")
    if shape[0] < 1 or shape[1] < 1 or shape[2] < 1:
        raise DatasetError(f"{path}: shape is {shape}, expected at least 1 slice of >= 1 px")


def load_series(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Load one series as a uint8 (slices, H, W) array, checking it against the contract."""
    path = Path(path)
    shape, dtype = read_series_header(path)
    check_series(path, shape, dtype)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npy file ({exc})") from None
    return arr


def tune_split(case_ids: Sequence[str], labels: Sequence[int], fraction: float,
               seed: int) -> set[str]:
    """Case ids of a stratified, seeded hold-out of ``fraction`` of the given cases.

    Each class contributes ``round(fraction * n_class)`` cases (at least one when the class
    has two or more), so the tune split keeps the train prevalence.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if len(case_ids) != len(labels):
        raise ValueError("case_ids and labels must have the same length")
    if fraction == 0.0:
        return set()
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    ids = np.asarray(case_ids)
    lab = np.asarray(labels)
    for cls in (0, 1):
        members = np.sort(ids[lab == cls])
        if len(members) == 0:
            continue
        k = int(round(fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        chosen.update(rng.permutation(members)[:k].tolist())
    return chosen


def dataset_fingerprint(root: str | Path) -> str:
    """A sha256 over the dataset's label CSVs (their bytes) and series (name and size).

    Series are identified by relative path and byte size rather than content, so the
    fingerprint of the real dataset (3,750 files, several GB) takes milliseconds; any added,
    removed, renamed or resized series, or any changed label, changes it.
    """
    root = Path(root)
    h = hashlib.sha256()
    for split in SPLITS:
        for task in TASKS:
            path = root / f"{split}-{task}.csv"
            h.update(f"{path.name}\0".encode())
            h.update(path.read_bytes() if path.is_file() else b"<missing>")
        for plane in PLANES:
            folder = root / split / plane
            files = sorted(folder.glob("*.npy")) if folder.is_dir() else []
            for f in files:
                h.update(f"{split}/{plane}/{f.name}\0{f.stat().st_size}\0".encode())
    return h.hexdigest()
