"""Reader for datasets in the MURA-v1.1 layout.

```
MURA-v1.1/{train,valid}/XR_{TYPE}/patientNNNNN/studyK_{positive,negative}/imageN.png
MURA-v1.1/{split}_image_paths.csv       no header; one image path per line
MURA-v1.1/{split}_labeled_studies.csv   no header; study folder (trailing slash), 0/1 label
```
Paths in the CSVs are relative to the folder holding ``MURA-v1.1`` (they start with
``MURA-v1.1/``). A study is identified by its folder below the split, e.g.
``XR_WRIST/patient11185/study1_positive`` (a string, with the split in its own column); images
are joined to their study by that folder, never by row order. Views per study vary, image sizes
vary, and PNGs may be greyscale or RGB; :func:`load_view` returns every one as uint8 grey.

Every problem is a :class:`~mrnet.core.errors.DatasetError` of one line naming the file (and row)
and what is wrong.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from mrnet.core.errors import DatasetError
from mrnet.mura import SPLITS, STUDY_TYPES

STUDY_DIR = re.compile(r"(XR_[A-Z]+)/(patient\d+)/(study\d+)_(positive|negative)")
IMAGE_NAME = re.compile(r"[^/]+\.png", re.IGNORECASE)


class Split(NamedTuple):
    """One split: a row per study and a row per view.

    ``studies``: study_id, split, study_type, patient, label, n_views (CSV order).
    ``views``: study_id, view (file stem), path (absolute), grouped by study in study order,
    each study's views in image-CSV order.
    """

    studies: pd.DataFrame
    views: pd.DataFrame


def image_paths_csv(root: str | Path, split: str) -> Path:
    """``{root}/{split}_image_paths.csv``."""
    return Path(root) / f"{split}_image_paths.csv"


def labeled_studies_csv(root: str | Path, split: str) -> Path:
    """``{root}/{split}_labeled_studies.csv``."""
    return Path(root) / f"{split}_labeled_studies.csv"


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of every non-blank line of a header-less CSV."""
    if not path.is_file():
        raise DatasetError(f"{path}: CSV not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [(i, [f.strip() for f in row]) for i, row in enumerate(csv.reader(fh), 1)]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    rows = [(i, r) for i, r in rows if any(r)]
    if not rows:
        raise DatasetError(f"{path}: CSV is empty")
    return rows


def _relative(where: str, value: str, root: Path, split: str) -> str:
    """The part of a CSV path below ``MURA-v1.1/{split}/``."""
    parts = value.replace("\\", "/").strip("/").split("/")
    if len(parts) < 3 or parts[1] != split:
        raise DatasetError(f"{where}: path {value!r} is not under <dataset>/{split}/ "
                           f"(expected e.g. MURA-v1.1/{split}/XR_WRIST/patient00001/"
                           "study1_positive/...)")
    if parts[0] not in ("MURA-v1.1", root.name):
        raise DatasetError(f"{where}: path {value!r} starts with {parts[0]!r}, expected "
                           f"'MURA-v1.1/' (paths are relative to the folder holding the dataset)")
    return "/".join(parts[2:])


def _study_parts(where: str, rel: str) -> re.Match:
    found = STUDY_DIR.fullmatch(rel)
    if found is None:
        raise DatasetError(f"{where}: {rel!r} is not a study folder "
                           "XR_<TYPE>/patient<N>/study<K>_<positive|negative>")
    if found.group(1) not in STUDY_TYPES:
        raise DatasetError(f"{where}: unknown study type {found.group(1)!r}; expected one of "
                           f"{', '.join(STUDY_TYPES)}")
    return found


def read_labeled_studies(root: str | Path, split: str) -> pd.DataFrame:
    """The studies of ``split`` with their labels, in CSV order.

    Raises:
        DatasetError: a missing CSV or study folder, a row that is not ``path,label``, a label
            other than 0/1 or one that contradicts the folder's ``_positive``/``_negative``, a
            study listed twice. The message names the file and line.
    """
    root = Path(root)
    path = labeled_studies_csv(root, split)
    records, seen = [], {}
    for lineno, row in _read_rows(path):
        where = f"{path}:{lineno}"
        if len(row) != 2:
            raise DatasetError(f"{where}: expected 2 columns (study folder, label), "
                               f"got {len(row)}: {','.join(row)!r}")
        study, label = row
        if label not in ("0", "1"):
            what = "a header row" if lineno == 1 and "/" not in study else f"label {label!r}"
            raise DatasetError(f"{where}: {what}; labels must be 0 or 1 and the CSV has no "
                               "header")
        study_id = _relative(where, study, root, split)
        found = _study_parts(where, study_id)
        if int(label) != (found.group(4) == "positive"):
            raise DatasetError(f"{where}: label {label} contradicts the folder name "
                               f"{found.group(3)}_{found.group(4)}")
        if study_id in seen:
            raise DatasetError(f"{where}: study {study_id} is listed twice (first on line "
                               f"{seen[study_id]})")
        seen[study_id] = lineno
        folder = root / split / study_id
        if not folder.is_dir():
            raise DatasetError(f"{where}: study folder {folder} not found")
        records.append((study_id, split, found.group(1), found.group(2), int(label)))
    return pd.DataFrame(records, columns=["study_id", "split", "study_type", "patient", "label"])


def read_split(root: str | Path, split: str) -> Split:
    """Studies and views of one split, images joined to studies by their folder.

    Raises:
        DatasetError: anything :func:`read_labeled_studies` refuses; an image row that is not
            one ``.png`` path inside a labelled study, a missing image file, an image listed
            twice, a labelled study without images.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (data.root in mura/params.yaml)")
    studies = read_labeled_studies(root, split)
    known = set(studies["study_id"])
    path = image_paths_csv(root, split)
    views: dict[str, list[tuple[str, str]]] = {s: [] for s in studies["study_id"]}
    seen: dict[str, int] = {}
    for lineno, row in _read_rows(path):
        where = f"{path}:{lineno}"
        if len(row) != 1:
            raise DatasetError(f"{where}: expected one image path per line, got {len(row)} "
                               f"columns: {','.join(row)!r}")
        rel = _relative(where, row[0], root, split)
        study_id, _, name = rel.rpartition("/")
        if not IMAGE_NAME.fullmatch(name):
            raise DatasetError(f"{where}: {row[0]!r} is not a .png image path")
        _study_parts(where, study_id)
        if study_id not in known:
            raise DatasetError(f"{where}: image of study {study_id}, which "
                               f"{labeled_studies_csv(root, split).name} does not label")
        if rel in seen:
            raise DatasetError(f"{where}: image {rel} is listed twice (first on line {seen[rel]})")
        seen[rel] = lineno
        file = root / split / rel
        if not file.is_file():
            raise DatasetError(f"{where}: image file {file} not found")
        views[study_id].append((Path(name).stem, str(file.resolve())))
    empty = [s for s, v in views.items() if not v]
    if empty:
        raise DatasetError(f"{path}: study {empty[0]} has no image ({len(empty)} labelled "
                           "studies without images)")
    studies["n_views"] = [len(views[s]) for s in studies["study_id"]]
    view_rows = [(s, name, file) for s in studies["study_id"] for name, file in views[s]]
    return Split(studies, pd.DataFrame(view_rows, columns=["study_id", "view", "path"]))


# MURA's radiographs are at most a few thousand pixels a side; a header claiming more than
# this is refused before any pixel is decoded (PIL's own bomb limit is 89 M pixels, with only
# a warning below twice that).
MAX_VIEW_PIXELS = 2**26
# What PIL raises for a decompression bomb or over-large text chunks (zTXt/iTXt bombs), and
# for files it cannot read.
IMAGE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
                SyntaxError, EOFError)


def _image_error(path: str | Path, exc: BaseException) -> DatasetError:
    text = " ".join(str(exc).split())[:160]
    if isinstance(exc, Image.DecompressionBombError):
        return DatasetError(f"{path}: a PNG of more pixels than a radiograph can have, refused "
                            f"as a decompression bomb ({text})")
    return DatasetError(f"{path}: not a readable PNG image ({text})")


def _check_png(path: str | Path, img: Image.Image) -> None:
    if img.format != "PNG":
        raise DatasetError(f"{path}: not a PNG image (found {img.format})")
    width, height = img.size
    if width * height > MAX_VIEW_PIXELS:
        raise DatasetError(f"{path}: a PNG of {width} x {height} pixels, more than the "
                           f"{MAX_VIEW_PIXELS} a radiograph can have, refused as a "
                           "decompression bomb")


def image_info(path: str | Path) -> tuple[int, int, str]:
    """(height, width, PIL mode) of a PNG from its header, without decoding the pixels.

    Raises:
        DatasetError: the file is not a readable PNG, or claims more than
            :data:`MAX_VIEW_PIXELS` pixels or over-large text chunks.
    """
    try:
        with Image.open(path) as img:
            _check_png(path, img)
            width, height = img.size
            return height, width, img.mode
    except IMAGE_ERRORS as exc:
        raise _image_error(path, exc) from None


def to_grey(img: Image.Image) -> np.ndarray:
    """A PIL image as uint8 grey (H, W): RGB(A) by luma, 16-bit by its own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return np.round((arr - lo) * scale).astype(np.uint8)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def load_view(path: str | Path) -> np.ndarray:
    """One radiograph as uint8 grey (H, W), whatever its PNG mode.

    Raises:
        DatasetError: the file is missing, not a PNG, cannot be decoded, or claims more than
            :data:`MAX_VIEW_PIXELS` pixels or over-large text chunks (a decompression bomb).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            _check_png(path, img)  # before decoding
            img.load()
            grey = to_grey(img)
    except IMAGE_ERRORS as exc:
        raise _image_error(path, exc) from None
    if grey.ndim != 2 or min(grey.shape) < 8:
        raise DatasetError(f"{path}: image of shape {grey.shape} is too small or not 2-D")
    return grey


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name.lower()))


def study_view_files(folder: str | Path) -> list[Path]:
    """The ``.png`` views of one study folder, in natural order (image2 before image10).

    Raises:
        DatasetError: the folder is missing or holds no PNG.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: study folder not found")
    files = sorted((p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")),
                   key=_natural_key)
    if not files:
        raise DatasetError(f"{folder}: no .png view in the study folder")
    return files
