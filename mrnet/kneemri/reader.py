"""Reader and validator for the public KneeMRI dataset (Štajduhar et al. 2017, Rijeka).

```
ROOT/metadata.csv             header: examId,serieNo,aclDiagnosis,kneeLR,roiX,roiY,roiZ,
                              roiHeight,roiWidth,roiDepth,volumeFilename
ROOT/vol01 … vol10/*.pck      one pickled 3-D numpy array per sagittal series,
                              (slices, rows, cols) of 12-bit intensities, integer dtypes vary
```
aclDiagnosis is 0 (healthy), 1 (partially injured) or 2 (completely ruptured). Metadata rows
are joined to volumes by file name (``volumeFilename``), never by position; the folder a file
lies in decides its split, as in the public code: train vol03,04,06,07,08,09, valid vol05,10,
test vol01,02. Case ids are the file names without ``.pck`` (e.g. ``"329637-8"``).

Pickles can run code when loaded, so volumes are read only through :class:`NumpyUnpickler`,
which builds numpy arrays and refuses every other global.
"""

from __future__ import annotations

import csv
import logging
import pickle
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from mrnet.core.errors import DatasetError
from mrnet.core.io import replace_with_note

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("examId", "serieNo", "aclDiagnosis", "kneeLR", "roiX", "roiY",
                            "roiZ", "roiHeight", "roiWidth", "roiDepth", "volumeFilename")
FOLDERS: tuple[str, ...] = tuple(f"vol{i:02d}" for i in range(1, 11))
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {
    "train": ("vol03", "vol04", "vol06", "vol07", "vol08", "vol09"),
    "valid": ("vol05", "vol10"),
    "test": ("vol01", "vol02"),
}
KNEEMRI_SPLITS: tuple[str, ...] = tuple(SPLIT_FOLDERS)
# The two binary tasks and the aclDiagnosis values that are positive for each.
KNEEMRI_TASKS: dict[str, tuple[int, ...]] = {"injury": (1, 2), "complete": (2,)}
DIAGNOSES = (0, 1, 2)
MAX_INTENSITY = 4095  # 12-bit
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²".isdigit() is true, int("²") fails
PLANE = "sagittal"
# The splits of the probability tables the KneeMRI stages write (train scores none).
TABLE_SPLITS: tuple[str, ...] = ("valid", "test")

# The only globals a numpy-array pickle needs, reviewed one by one. Protocols 0-4 write
# _reconstruct(ndarray, (0,), b"b") and then set the state (shape, dtype, raw bytes);
# protocols 0-2 from Python 3 carry those bytes as _codecs.encode(text, "latin1"); protocol 5
# writes numeric._frombuffer(buffer, dtype, shape, order). numpy 2 calls numpy.core
# numpy._core. Each is handed out wrapped, so that it can build nothing but a numpy array
# whose size its bytes in the file account for.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class UnsafePickleError(DatasetError):
    """A pickle asks for something other than a numpy array."""


class _NdarrayType:
    """What a pickle gets for ``numpy.ndarray``: an argument for ``_reconstruct`` only.

    Calling it (``numpy.ndarray(shape)``, an array of any size with no data behind it) is
    refused.
    """

    def __init__(self, source: str) -> None:
        self.source = source

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError(f"{self.source}: refused a bare numpy.ndarray construction (an "
                                "array without data); a KneeMRI volume is a pickled array "
                                "with its bytes")


def _multiarray():
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else.

    Every global a pickle names goes through :meth:`find_class`; anything outside
    ``_ALLOWED_GLOBALS`` (``os.system``, ``builtins.eval``, ``subprocess.Popen``, other numpy
    functions …) is refused before it is called, so a malicious file runs no code. The allowed
    ones are wrapped: ``ndarray`` cannot be called, ``_reconstruct`` builds only the empty
    array that numpy's pickles start from, ``_frombuffer`` only an array whose shape and
    itemsize match the bytes given, ``dtype`` no object dtype, ``_codecs.encode`` only
    latin-1. numpy itself refuses a state whose bytes do not match its shape. So the size of
    what a pickle builds is bounded by the bytes in the file.
    """

    def __init__(self, file, source: str) -> None:
        # latin1: the Python 2 pickles hold the array bytes as byte strings.
        super().__init__(file, encoding="latin1")
        self.source = source
        self.ndarray = _NdarrayType(source)

    def refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(f"{self.source}: refused {what}; a KneeMRI volume may contain "
                                 "only a numpy array")

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) not in _ALLOWED_GLOBALS:
            raise self.refuse(f"to unpickle {module}.{name}")
        return {"_reconstruct": self.reconstruct, "_frombuffer": self.frombuffer,
                "ndarray": self.ndarray, "dtype": self.dtype, "encode": self.encode}[name]

    def reconstruct(self, subtype, shape, typecode):
        if subtype is not self.ndarray or tuple(shape) != (0,):
            raise self.refuse(f"_reconstruct({subtype!r}, {shape!r}) (numpy pickles an array "
                              "as an empty one and then its data)")
        return _multiarray()[0]._reconstruct(np.ndarray, (0,), typecode)

    def frombuffer(self, buf, dtype, shape, order):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise self.refuse(f"an array of dtype {dtype!r}")
        try:
            size = memoryview(buf).nbytes
            shape = tuple(int(n) for n in shape)
        except (TypeError, ValueError):
            raise self.refuse("an array whose data is not a buffer") from None
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if any(n < 0 for n in shape) or claimed != size:
            raise self.refuse(f"an array of shape {shape} ({dtype}) from {size} bytes of data")
        return _multiarray()[1]._frombuffer(buf, dtype, shape, order)

    def dtype(self, *args):
        d = np.dtype(*args)
        if d.hasobject:
            raise self.refuse(f"an array of dtype {d} (Python objects)")
        return d

    def encode(self, text, encoding="utf-8"):
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise self.refuse(f"_codecs.encode(..., {encoding!r})")
        return text.encode("latin1")

    def persistent_load(self, pid):  # noqa: D102 - pickle API
        raise UnsafePickleError(f"{self.source}: refused a persistent id in the pickle; a "
                                "KneeMRI volume may contain only a numpy array")


def load_pickled_array(path: str | Path) -> np.ndarray:
    """Unpickle one numpy array from ``path`` with :class:`NumpyUnpickler`.

    Raises:
        UnsafePickleError: the pickle names anything but the numpy array machinery.
        DatasetError: the file is missing, not a pickle, or holds something else.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: volume file not found")
    try:
        with path.open("rb") as fh:
            obj = NumpyUnpickler(fh, str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise DatasetError(f"{path}: not a readable pickled numpy array "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, np.ndarray):
        raise DatasetError(f"{path}: holds a {type(obj).__name__}, expected a numpy array")
    return obj


def check_volume(path: str | Path, vol: np.ndarray) -> None:
    """Raise :class:`DatasetError` unless ``vol`` is a 3-D integer array of 12-bit values."""
    if not np.issubdtype(vol.dtype, np.integer):
        raise DatasetError(f"{path}: dtype is {vol.dtype}, expected an integer dtype "
                           "(12-bit intensities)")
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise DatasetError(f"{path}: shape is {vol.shape}, expected 3-D (slices, rows, cols)")
    lo, hi = int(vol.min()), int(vol.max())
    if lo < 0 or hi > MAX_INTENSITY:
        raise DatasetError(f"{path}: intensities span {lo}..{hi}, expected 12-bit values "
                           f"in 0..{MAX_INTENSITY}")


class Series(NamedTuple):
    """One metadata row joined to its volume file."""

    case_id: str
    split: str
    folder: str
    path: Path
    diagnosis: int
    knee_lr: int
    roi: tuple[int, int, int, int, int, int]  # x, y, z, height, width, depth
    line: int  # line of metadata.csv


def metadata_path(root: str | Path) -> Path:
    """Path of the metadata table of a KneeMRI folder."""
    return Path(root) / "metadata.csv"


def read_metadata(root: str | Path) -> pd.DataFrame:
    """Read and check ``metadata.csv``; every cell kept as a string, index = file line.

    Raises:
        DatasetError: naming the file and line of the first problem: a missing or extra
            column, an empty cell, a non-integer number, an aclDiagnosis outside 0/1/2, a
            kneeLR outside 0/1, an empty ROI, a file name that is not a bare ``*.pck`` or that
            repeats.
    """
    path = metadata_path(root)
    if not path.is_file():
        raise DatasetError(f"{path}: metadata.csv not found; is kneemri.root the unpacked "
                           "KneeMRI folder (the one holding metadata.csv and vol01..vol10)?")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [(n, row) for n, row in enumerate(csv.reader(fh), start=1)
                if row and any(c.strip() for c in row)]
    if not rows:
        raise DatasetError(f"{path}: empty file; expected the header {','.join(COLUMNS)}")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    if missing or extra or len(header) != len(COLUMNS):
        what = (f"column {missing[0]!r} is missing" if missing else
                f"unknown column {extra[0]!r}" if extra else "a column repeats")
        raise DatasetError(f"{path}:{rows[0][0]}: {what}; expected the header "
                           f"{','.join(COLUMNS)}")
    records, lines = [], []
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise DatasetError(f"{path}:{lineno}: expected {len(header)} fields, got "
                               f"{len(row)}: {','.join(row)!r}")
        records.append([c.strip() for c in row])
        lines.append(lineno)
    if not records:
        raise DatasetError(f"{path}: no rows below the header")
    df = pd.DataFrame(records, columns=header, index=lines, dtype=str)[list(COLUMNS)]
    seen: dict[str, int] = {}
    for lineno, rec in df.iterrows():
        where = f"{path}:{lineno}"
        for col in COLUMNS[:-1]:
            value = rec[col]
            if not INTEGER.fullmatch(value):
                raise DatasetError(f"{where}: {col} must be an integer, got {value!r}")
        if int(rec["aclDiagnosis"]) not in DIAGNOSES:
            raise DatasetError(f"{where}: aclDiagnosis must be 0 (healthy), 1 (partial) or 2 "
                               f"(complete rupture), got {rec['aclDiagnosis']!r}")
        if int(rec["kneeLR"]) not in (0, 1):
            raise DatasetError(f"{where}: kneeLR must be 0 or 1, got {rec['kneeLR']!r}")
        for col in ("roiX", "roiY", "roiZ"):
            if int(rec[col]) < 0:
                raise DatasetError(f"{where}: {col} must be >= 0, got {rec[col]}")
        for col in ("roiHeight", "roiWidth", "roiDepth"):
            if int(rec[col]) < 1:
                raise DatasetError(f"{where}: {col} must be >= 1, got {rec[col]}")
        name = rec["volumeFilename"]
        if not name.endswith(".pck") or "/" in name or "\\" in name or name == ".pck":
            raise DatasetError(f"{where}: volumeFilename must be a bare file name ending in "
                               f".pck, got {name!r}")
        if name in seen:
            raise DatasetError(f"{where}: volumeFilename {name} is listed twice "
                               f"(first on line {seen[name]})")
        seen[name] = lineno
    return df


def list_series(root: str | Path) -> list[Series]:
    """The metadata rows joined by file name to the volumes in vol01..vol10, sorted by case id.

    Raises:
        DatasetError: a folder vol01..vol10 is missing, a file lies in two folders, a row's
            file is in no folder, or a folder holds a ``.pck`` that no row lists.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: KneeMRI folder not found (kneemri.root)")
    meta = read_metadata(root)
    located: dict[str, Path] = {}
    for folder in FOLDERS:
        d = root / folder
        if not d.is_dir():
            raise DatasetError(f"{d}: folder not found; KneeMRI spreads its volumes over "
                               f"{FOLDERS[0]}..{FOLDERS[-1]}")
        for p in sorted(d.glob("*.pck")):
            if p.name in located:
                raise DatasetError(f"{p}: {p.name} is also in {located[p.name].parent.name}; "
                                   "each volume must be in one folder")
            located[p.name] = p
    listed = set(meta["volumeFilename"])
    for name, p in sorted(located.items()):
        if name not in listed:
            raise DatasetError(f"{p}: not listed in {metadata_path(root)} (no aclDiagnosis "
                               "for it)")
    split_of = {f: s for s, folders in SPLIT_FOLDERS.items() for f in folders}
    out = []
    for lineno, rec in meta.iterrows():
        name = rec["volumeFilename"]
        if name not in located:
            raise DatasetError(f"{metadata_path(root)}:{lineno}: {name} is not in any of "
                               f"{FOLDERS[0]}..{FOLDERS[-1]}")
        p = located[name]
        roi = tuple(int(rec[c]) for c in ("roiX", "roiY", "roiZ", "roiHeight", "roiWidth",
                                          "roiDepth"))
        out.append(Series(case_id=name[:-len(".pck")], split=split_of[p.parent.name],
                          folder=p.parent.name, path=p, diagnosis=int(rec["aclDiagnosis"]),
                          knee_lr=int(rec["kneeLR"]), roi=roi, line=int(lineno)))
    return sorted(out, key=lambda s: s.case_id)


def check_roi(series: Series, shape: tuple[int, ...], root: str | Path) -> None:
    """Raise :class:`DatasetError` unless the row's ROI lies inside its volume."""
    x, y, z, h, w, d = series.roi
    n, rows, cols = shape
    if z + d > n or y + h > rows or x + w > cols:
        raise DatasetError(f"{metadata_path(root)}:{series.line}: ROI of {series.path.name} "
                           f"(x {x}+{w}, y {y}+{h}, z {z}+{d}) reaches outside its volume "
                           f"of shape {tuple(shape)} (slices, rows, cols)")


def load_series_volume(series: Series, root: str | Path) -> np.ndarray:
    """Load, check and return one series' volume (its own integer dtype)."""
    vol = load_pickled_array(series.path)
    check_volume(series.path, vol)
    check_roi(series, vol.shape, root)
    return vol


def labels_table(series: list[Series]) -> pd.DataFrame:
    """One row per series: case_id, split, folder, aclDiagnosis and the 0/1 label of each
    task (``injury``: diagnosis >= 1, ``complete``: diagnosis 2), all as strings."""
    rows = []
    for s in series:
        row = {"case_id": s.case_id, "split": s.split, "folder": s.folder,
               "aclDiagnosis": str(s.diagnosis)}
        for task, positive in KNEEMRI_TASKS.items():
            row[task] = str(int(s.diagnosis in positive))
        rows.append(row)
    return pd.DataFrame(rows, columns=["case_id", "split", "folder", "aclDiagnosis",
                                       *KNEEMRI_TASKS], dtype=str)


def task_labels(diagnosis: np.ndarray | list[int], task: str) -> np.ndarray:
    """0/1 labels of ``task`` from aclDiagnosis values."""
    if task not in KNEEMRI_TASKS:
        raise ValueError(f"unknown KneeMRI task {task!r}; expected one of "
                         f"{', '.join(KNEEMRI_TASKS)}")
    return np.isin(np.asarray(diagnosis, dtype=np.int64), KNEEMRI_TASKS[task]).astype(np.int64)


def table_path(folder: str | Path, task: str, model: str) -> Path:
    """Path of one probability table, ``{folder}/{task}-{model}.csv``."""
    return Path(folder) / f"{task}-{model}.csv"


def read_labels_table(path: str | Path) -> pd.DataFrame:
    """Read ``labels.csv`` written by :func:`prepare_kneemri` (every column a string)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: KneeMRI labels not found; run `dvc repro kneemri_prepare`")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def write_off_note(out: str | Path, what: str) -> Path:
    """Replace a stage's output folder with only a README.txt saying the stage is off."""
    return replace_with_note(out, f"kneemri.enabled is false: {what} was skipped. Turn the "
                             "KneeMRI external validation on with `dvc exp run -S "
                             "kneemri.enabled=true` (phantoms) and "
                             "`-S kneemri.root=/path/to/KneeMRI` for the real dataset.\n")
