"""KneeMRI reader, restricted unpickler, validator, phantoms and preprocessing."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import pickletools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import raw_params

from mrnet.config import KneemriSyntheticConfig, params_from_dict
from mrnet.core.errors import DatasetError, ParamsError
from mrnet.kneemri.prepare import crop_box, prepare_kneemri, preprocess, to_uint8
from mrnet.kneemri.reader import (COLUMNS, FOLDERS, NumpyUnpickler, UnsafePickleError,
                                  labels_table, list_series, load_pickled_array,
                                  load_series_volume, read_labels_table, task_labels)
from mrnet.kneemri.synthetic import generate_kneemri, py2_pickle, render_series

TINY = KneemriSyntheticConfig(seed=0, exams_per_folder=3, image_size=48, slices_min=4,
                              slices_max=6)


@pytest.fixture(scope="module")
def kneemri(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny KneeMRI-format phantom dataset shared by this module; do not modify it."""
    root = tmp_path_factory.mktemp("kneemri") / "KneeMRI"
    generate_kneemri(root, TINY)
    return root


@pytest.fixture
def kneemri_copy(kneemri: Path, tmp_path: Path) -> Path:
    root = tmp_path / "KneeMRI"
    shutil.copytree(kneemri, root)
    return root


def metadata_rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_metadata(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# ----------------------------------------------------------------------------- reader


def test_reader_joins_shuffled_metadata_to_folders_by_file_name(kneemri: Path) -> None:
    rows = metadata_rows(kneemri)
    assert len(rows) == 30 and list(rows[0]) == list(COLUMNS)
    folder_of = {p.name: p.parent.name for p in kneemri.glob("vol*/*.pck")}
    assert len(folder_of) == 30
    # the metadata is not in folder order, so a positional join would mislabel
    assert [folder_of[r["volumeFilename"]] for r in rows] != sorted(folder_of[r["volumeFilename"]]
                                                                   for r in rows)
    series = list_series(kneemri)
    assert [s.case_id for s in series] == sorted(r["volumeFilename"][:-4] for r in rows)
    by_name = {r["volumeFilename"]: r for r in rows}
    split_count = {"train": 0, "valid": 0, "test": 0}
    for s in series:
        r = by_name[s.path.name]
        assert isinstance(s.case_id, str) and s.case_id == f"{r['examId']}-{r['serieNo']}"
        assert s.folder == folder_of[s.path.name]
        assert s.diagnosis == int(r["aclDiagnosis"])
        expected = ("test" if s.folder in ("vol01", "vol02") else
                    "valid" if s.folder in ("vol05", "vol10") else "train")
        assert s.split == expected
        split_count[s.split] += 1
    assert split_count == {"train": 18, "valid": 6, "test": 6}


def test_reader_reads_three_integer_dtypes_exactly(kneemri: Path) -> None:
    series = list_series(kneemri)
    dtypes = set()
    for s in series:
        vol = load_series_volume(s, kneemri)
        dtypes.add(vol.dtype)
        assert vol.ndim == 3 and vol.shape[1:] == (48, 48)
        assert 0 <= vol.min() and vol.max() <= 4095
    assert dtypes == {np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.int32)}
    # the file holds exactly what the phantom rendered (index 0 is the first series written)
    vol, roi, knee_lr = render_series(0, 0, TINY)
    again, _, _ = render_series(0, 0, TINY)
    assert np.array_equal(vol, again) and vol.dtype == np.uint16


def test_labels_of_both_tasks_come_from_acl_diagnosis(kneemri: Path) -> None:
    assert task_labels([0, 1, 2, 0, 2], "injury").tolist() == [0, 1, 1, 0, 1]
    assert task_labels([0, 1, 2, 0, 2], "complete").tolist() == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown KneeMRI task"):
        task_labels([0], "acl")
    table = labels_table(list_series(kneemri))
    assert all(isinstance(v, str) for v in table.to_numpy().ravel())
    diag = {r["volumeFilename"][:-4]: r["aclDiagnosis"] for r in metadata_rows(kneemri)}
    for row in table.itertuples():
        assert row.aclDiagnosis == diag[row.case_id]
        assert row.injury == ("1" if diag[row.case_id] in ("1", "2") else "0")
        assert row.complete == ("1" if diag[row.case_id] == "2" else "0")
    # every split has both classes of both tasks, even at this size
    for split in ("train", "valid", "test"):
        part = table[table["split"] == split]
        assert set(part["injury"]) == {"0", "1"} and set(part["complete"]) == {"0", "1"}


# ----------------------------------------------------------------------------- pickles


def test_phantom_pickles_are_python2_numpy_pickles() -> None:
    arr = (np.arange(2 * 3 * 100) % 4096).astype(np.int16).reshape(2, 3, 100)
    data = py2_pickle(arr)
    ops = list(pickletools.genops(data))
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = [arg for op, arg, _ in ops if op.name == "GLOBAL"]
    assert globals_ == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]
    assert "BINSTRING" in {op.name for op, _, _ in ops}  # the raw bytes as a Python 2 str
    plain = pickle.loads(data, encoding="latin1")  # what the dataset's own example does
    ours = NumpyUnpickler(io.BytesIO(data), "x").load()
    for out in (plain, ours):
        assert out.dtype == np.int16 and np.array_equal(out, arr)


def test_unpickler_accepts_numpy2_module_name(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    path = tmp_path / "a.pck"
    data = pickle.dumps(arr, protocol=3)
    assert b"numpy._core.multiarray" in data or b"numpy.core.multiarray" in data
    path.write_bytes(data)
    assert np.array_equal(load_pickled_array(path), arr)


class _Evil:
    """Unpickling this runs ``func(*args)``."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda marker: _Evil(os.system, f"touch {marker}"),
    lambda marker: _Evil(open, str(marker), "w"),
    lambda marker: _Evil(subprocess.call, ["touch", str(marker)]),
    lambda marker: _Evil(eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: [np.zeros((1, 2, 2), np.uint16), _Evil(os.system, f"touch {marker}")],
], ids=["os.system", "open", "subprocess", "eval", "hidden-in-list"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, make) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "vol01" / "1-1.pck"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps(make(marker), protocol=2))
    with pytest.raises(UnsafePickleError) as err:
        load_pickled_array(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to unpickle ")
    assert "\n" not in message
    assert not marker.exists()


def test_other_numpy_globals_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.pck"
    path.write_bytes(pickle.dumps(_Evil(np.load, "x.npy"), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused to unpickle numpy\.load"):
        load_pickled_array(path)
    # Python 3 writes an array's bytes at protocol 2 through _codecs.encode, allowed for
    # latin-1 only (test_hostile loads every protocol).
    path.write_bytes(pickle.dumps(_Evil(__import__("_codecs").encode, "x", "rot13"), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refused _codecs\.encode\(\.\.\., 'rot13'\)"):
        load_pickled_array(path)


def test_malicious_volume_in_dataset_stops_prepare_before_any_output(kneemri_copy: Path,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    victim = sorted(kneemri_copy.glob("vol01/*.pck"))[0]
    victim.write_bytes(pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2))
    out = tmp_path / "prepared"
    with pytest.raises(UnsafePickleError, match=rf"^{victim}: refused to unpickle "):
        prepare_kneemri(kneemri_copy, out, "roi", 2.0, 64)
    assert not marker.exists()
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


# ----------------------------------------------------------------------------- validator


def _break_row(root: Path, key: str, value: str, index: int = 0) -> int:
    rows = metadata_rows(root)
    rows[index][key] = value
    write_metadata(root, rows)
    return index + 2  # line in the file


@pytest.mark.parametrize("key,value,pattern", [
    ("aclDiagnosis", "3", "aclDiagnosis must be 0 \\(healthy\\), 1 \\(partial\\) or 2"),
    ("aclDiagnosis", "x", "aclDiagnosis must be an integer, got 'x'"),
    ("kneeLR", "2", "kneeLR must be 0 or 1, got '2'"),
    ("roiWidth", "0", "roiWidth must be >= 1, got 0"),
    ("volumeFilename", "vol01/a.pck", "volumeFilename must be a bare file name ending in .pck"),
])
def test_bad_metadata_cell_names_file_and_line(kneemri_copy: Path, key: str, value: str,
                                               pattern: str) -> None:
    line = _break_row(kneemri_copy, key, value, index=3)
    with pytest.raises(DatasetError, match=rf"^{kneemri_copy / 'metadata.csv'}:{line}: {pattern}"):
        list_series(kneemri_copy)


def test_metadata_header_and_duplicates(kneemri_copy: Path) -> None:
    meta = kneemri_copy / "metadata.csv"
    text = meta.read_text()
    meta.write_text(text.replace("aclDiagnosis", "diagnosis", 1))
    with pytest.raises(DatasetError, match=r"metadata.csv:1: column 'aclDiagnosis' is missing"):
        list_series(kneemri_copy)
    meta.write_text(text)
    rows = metadata_rows(kneemri_copy)
    rows[5]["volumeFilename"] = rows[2]["volumeFilename"]
    write_metadata(kneemri_copy, rows)
    with pytest.raises(DatasetError, match=rf"metadata.csv:7: volumeFilename "
                                           rf"{rows[2]['volumeFilename']} is listed twice "
                                           r"\(first on line 4\)"):
        list_series(kneemri_copy)


def test_files_and_rows_must_match(kneemri_copy: Path) -> None:
    rows = metadata_rows(kneemri_copy)
    name = rows[0]["volumeFilename"]
    path = next(kneemri_copy.glob(f"vol*/{name}"))
    # a volume that no row lists
    write_metadata(kneemri_copy, rows[1:])
    with pytest.raises(DatasetError, match=rf"^{path}: not listed in .*metadata.csv"):
        list_series(kneemri_copy)
    # a row whose volume is in no folder
    write_metadata(kneemri_copy, rows)
    path.unlink()
    with pytest.raises(DatasetError, match=rf"metadata.csv:2: {name} is not in any of "
                                           r"vol01..vol10"):
        list_series(kneemri_copy)
    # one volume in two folders
    other = sorted(kneemri_copy.glob("vol02/*.pck"))[0]
    shutil.copy(other, kneemri_copy / "vol03" / other.name)
    with pytest.raises(DatasetError, match=f"{other.name} is also in"):
        list_series(kneemri_copy)


def test_missing_folder_and_root(kneemri_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="KneeMRI folder not found"):
        list_series(tmp_path / "nowhere")
    shutil.rmtree(kneemri_copy / "vol07")
    with pytest.raises(DatasetError, match=rf"^{kneemri_copy / 'vol07'}: folder not found"):
        list_series(kneemri_copy)


@pytest.mark.parametrize("arr,pattern", [
    (np.zeros((2, 48, 48), np.float32), "dtype is float32, expected an integer dtype"),
    (np.full((2, 48, 48), 5000, np.uint16), "intensities span 5000..5000, expected 12-bit"),
    (np.zeros((48, 48), np.uint16), r"shape is \(48, 48\), expected 3-D"),
])
def test_bad_volume_names_the_file(kneemri_copy: Path, arr: np.ndarray, pattern: str) -> None:
    series = list_series(kneemri_copy)[0]
    series.path.write_bytes(py2_pickle(arr))
    with pytest.raises(DatasetError, match=rf"^{series.path}: {pattern}"):
        load_series_volume(series, kneemri_copy)


def test_roi_outside_volume_names_the_row(kneemri_copy: Path) -> None:
    rows = metadata_rows(kneemri_copy)
    rows[4]["roiZ"] = "40"
    write_metadata(kneemri_copy, rows)
    series = next(s for s in list_series(kneemri_copy) if s.line == 6)
    with pytest.raises(DatasetError, match=rf"metadata.csv:6: ROI of {series.path.name} .* "
                                           r"reaches outside its volume"):
        load_series_volume(series, kneemri_copy)


# ----------------------------------------------------------------------------- preprocessing


def test_crop_box_is_centred_on_the_roi_and_stays_inside() -> None:
    # ROI x 100..139, y 60..79 (h 20, w 40), slices 10..13; scale 2: an 80 px square, 8 slices
    assert crop_box((30, 320, 320), (100, 60, 10, 20, 40, 4), 2.0) == (
        slice(8, 16), slice(30, 110), slice(80, 160))
    # near the border the window shifts inward instead of shrinking
    assert crop_box((30, 320, 320), (0, 300, 28, 20, 20, 2), 2.0) == (
        slice(26, 30), slice(280, 320), slice(0, 40))
    # a window larger than the volume is the whole volume
    assert crop_box((5, 64, 64), (10, 10, 1, 50, 50, 4), 3.0) == (
        slice(0, 5), slice(0, 64), slice(0, 64))


def test_preprocess_scales_12_bit_to_uint8_at_the_training_size() -> None:
    rng = np.random.default_rng(0)
    vol = rng.integers(100, 3000, size=(6, 80, 80)).astype(np.int32)
    vol[0, 0, 0] = 4095  # one hot pixel does not set the scale
    scaled = to_uint8(vol)
    hi = np.percentile(vol.astype(np.float32), 99.5)
    assert scaled.dtype == np.uint8 and scaled.min() == 0 and scaled[0, 0, 0] == 255
    mid = vol == 1500
    assert np.all(scaled[mid] == np.rint((1500 - vol.min()) * 255 / (hi - vol.min())))
    out = preprocess(vol, (20, 20, 2, 20, 20, 2), "full", 2.0, 64)
    assert out.shape == (6, 64, 64) and out.dtype == np.uint8
    roi = preprocess(vol, (20, 20, 2, 20, 20, 2), "roi", 2.0, 64)
    assert roi.shape == (4, 64, 64)
    with pytest.raises(ValueError, match="crop must be 'roi' or 'full'"):
        preprocess(vol, (20, 20, 2, 20, 20, 2), "centre", 2.0, 64)


def test_prepare_writes_cache_labels_and_report(kneemri: Path, tmp_path: Path) -> None:
    series = list_series(kneemri)
    full = prepare_kneemri(kneemri, tmp_path / "full", "full", 2.0, 64)
    roi = prepare_kneemri(kneemri, tmp_path / "roi", "roi", 2.0, 64)
    for split, n in (("train", 18), ("valid", 6), ("test", 6)):
        members = [s for s in series if s.split == split]
        index = json.loads((tmp_path / "full" / "sagittal" / f"{split}.json").read_text())
        assert index["case_ids"] == [s.case_id for s in members] and len(members) == n
        slices = [load_series_volume(s, kneemri).shape[0] for s in members]
        assert index["counts"] == slices
        arr = np.load(tmp_path / "full" / "sagittal" / f"{split}.npy")
        assert arr.shape == (sum(slices), 64, 64) and arr.dtype == np.uint8
        roi_index = json.loads((tmp_path / "roi" / "sagittal" / f"{split}.json").read_text())
        assert roi_index["counts"] == [
            crop_box((c, 48, 48), s.roi, 2.0)[0].stop - crop_box((c, 48, 48), s.roi, 2.0)[0].start
            for c, s in zip(slices, members)]
        assert sum(full[split]["dtypes"].values()) == n
        assert full[split]["diagnosis"] == roi[split]["diagnosis"]
    labels = read_labels_table(tmp_path / "roi" / "labels.csv")
    assert labels["case_id"].tolist() == [s.case_id for s in series]
    assert json.loads((tmp_path / "roi" / "report.json").read_text())["crop"] == "roi"


def test_phantom_roi_holds_the_acl_tear() -> None:
    cfg = KneemriSyntheticConfig(seed=3, exams_per_folder=3, image_size=96, slices_min=16,
                                 slices_max=20)
    hits = 0
    for index in range(6):
        torn, roi, _ = render_series(index, 2, cfg)
        healthy, roi_h, _ = render_series(index, 0, cfg)
        assert roi == roi_h  # the same knee, the ROI marks the ligament either way
        diff = torn.astype(np.int64) - healthy.astype(np.int64)
        box = crop_box(torn.shape, roi, 2.0)
        inside = diff[box].clip(0).sum()
        hits += inside > 0.5 * diff.clip(0).sum()
    # the tear (and not a bone bruise elsewhere) is most of what changed in most knees
    assert hits >= 4


def test_kneemri_params_are_checked() -> None:
    raw = raw_params()
    params = params_from_dict(raw)
    assert params.kneemri.enabled is False and params.kneemri.crop in ("roi", "full")
    raw["kneemri"]["crop"] = "centre"
    with pytest.raises(ParamsError, match="kneemri.crop must be one of roi, full"):
        params_from_dict(raw)
    raw = raw_params()
    raw["kneemri"]["train"] = {"epochz": 2}
    with pytest.raises(ParamsError, match="unknown params key kneemri.train.epochz"):
        params_from_dict(raw)
    raw = raw_params()
    raw["kneemri"]["train"] = {"epochs": 2}
    assert params_from_dict(raw).kneemri_train().epochs == 2
    raw = raw_params()
    del raw["kneemri"]["roi_scale"]
    with pytest.raises(ParamsError, match="params key kneemri.roi_scale is missing"):
        params_from_dict(raw)


def test_folders_constant_matches_layout(kneemri: Path) -> None:
    assert sorted(p.name for p in kneemri.iterdir() if p.is_dir()) == list(FOLDERS)
