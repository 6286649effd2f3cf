"""The MRNet-v1.0 reader: labels joined by id, string ids, paths, CSV errors, tune split."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from mrnet import PLANES, SPLITS, TASKS
from mrnet.core.errors import DatasetError
from mrnet.data.reader import (label_csv, list_exams, load_series, read_labels, read_series_header,
                               tune_split)


def _csv_rows(path: Path) -> list[tuple[str, int]]:
    """The CSV read independently of the code under test."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            cid, label = line.split(",")
            rows.append((cid.strip(), int(label)))
    return rows


# --- joining labels by case id -------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_list_exams_matches_csvs(tiny_dataset: Path, split: str) -> None:
    exams = list_exams(tiny_dataset, split)
    for task in TASKS:
        expected = dict(_csv_rows(label_csv(tiny_dataset, split, task)))
        assert {e.case_id: e.labels[task] for e in exams} == expected
    assert [e.case_id for e in exams] == sorted(e.case_id for e in exams)
    assert all(e.split == split for e in exams)


def test_shuffled_csv_rows_give_same_records(tiny_copy: Path) -> None:
    before = {s: list_exams(tiny_copy, s) for s in SPLITS}
    rng = random.Random(0)
    for split in SPLITS:
        for task in TASKS:
            path = label_csv(tiny_copy, split, task)
            lines = path.read_text().splitlines()
            # Each task gets its own order, so a positional join would mix cases up.
            while len(lines) > 1 and lines == path.read_text().splitlines():
                rng.shuffle(lines)
            path.write_text("\n".join(lines) + "\n")
    after = {s: list_exams(tiny_copy, s) for s in SPLITS}
    assert after == before


def test_case_ids_stay_zero_padded_strings(tiny_dataset: Path) -> None:
    train = list_exams(tiny_dataset, "train")
    valid = list_exams(tiny_dataset, "valid")
    assert train[0].case_id == "0000"
    assert valid[0].case_id == "1130"
    for e in train + valid:
        assert isinstance(e.case_id, str) and len(e.case_id) == 4 and e.case_id.isdigit()
    labels = read_labels(label_csv(tiny_dataset, "train", "acl"))
    assert "0000" in labels and 0 not in labels and "0" not in labels


def test_list_exams_paths(tiny_dataset: Path) -> None:
    for split in SPLITS:
        for e in list_exams(tiny_dataset, split):
            assert set(e.paths) == set(PLANES)
            for plane, path in e.paths.items():
                assert path == tiny_dataset / split / plane / f"{e.case_id}.npy"
                assert path.is_file()


def test_list_exams_subset_of_tasks_and_planes(tiny_dataset: Path) -> None:
    exams = list_exams(tiny_dataset, "valid", tasks=["acl"], planes=["sagittal"])
    assert all(set(e.labels) == {"acl"} and set(e.paths) == {"sagittal"} for e in exams)
    with pytest.raises(ValueError, match="saggital"):
        list_exams(tiny_dataset, "valid", planes=["saggital"])


def test_list_exams_task_csvs_disagree(tiny_copy: Path) -> None:
    path = label_csv(tiny_copy, "train", "meniscus")
    lines = path.read_text().splitlines()
    dropped = lines[-1].split(",")[0]
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=f"train-meniscus.csv: case {dropped} is missing"):
        list_exams(tiny_copy, "train")


# --- read_labels ---------------------------------------------------------------------------

def test_read_labels_keeps_file_order_and_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "train-acl.csv"
    path.write_text("0002,1\n0000,0\n\n0001,1\n")
    labels = read_labels(path)
    assert list(labels.items()) == [("0002", 1), ("0000", 0), ("0001", 1)]


def test_read_labels_windows_and_excel_csv(tmp_path: Path) -> None:
    # CRLF line ends and a UTF-8 byte-order mark, as a CSV saved from Excel has.
    path = tmp_path / "train-acl.csv"
    path.write_bytes(b"\xef\xbb\xbf0000,1\r\n0001,0\r\n")
    assert read_labels(path).to_dict() == {"0000": 1, "0001": 0}


@pytest.mark.parametrize("text, lineno, fragment", [
    ("case,label\n0000,1\n", 1, "header row"),
    ("0000,1\n0001,2\n", 2, "case 0001 has label '2'"),
    ("0000,1\n0001,0\n0000,1\n", 3, "case 0000 is listed twice"),
    ("0000,1\n0001\n", 2, "expected 2 columns"),
    ("0000,1\nabcd,1\n", 2, "not a number"),
])
def test_read_labels_errors_name_file_and_row(tmp_path: Path, text: str, lineno: int,
                                              fragment: str) -> None:
    path = tmp_path / "valid-meniscus.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as info:
        read_labels(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{lineno}: ")
    assert fragment in msg
    assert "\n" not in msg


def test_read_labels_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train-abnormal.csv: label CSV not found"):
        read_labels(tmp_path / "train-abnormal.csv")
    (tmp_path / "empty.csv").write_text("\n")
    with pytest.raises(DatasetError, match="empty.csv: label CSV is empty"):
        read_labels(tmp_path / "empty.csv")


# --- series ---------------------------------------------------------------------------------

def test_series_header_and_load(tiny_dataset: Path) -> None:
    path = list_exams(tiny_dataset, "train")[0].paths["coronal"]
    arr = np.load(path)
    shape, dtype = read_series_header(path)
    assert shape == arr.shape and dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[1:] == (32, 32) and 2 <= arr.shape[0] <= 4
    np.testing.assert_array_equal(load_series(path), arr)
    np.testing.assert_array_equal(load_series(path, mmap=True), arr)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_series_header_all_npy_versions(tmp_path: Path, version: tuple[int, int]) -> None:
    arr = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / "0000.npy"
    with path.open("wb") as fh:
        np.lib.format.write_array(fh, arr, version=version)
    assert read_series_header(path) == ((2, 3, 5), np.dtype(np.uint8))


@pytest.mark.parametrize("arr, fragment", [
    (np.zeros((2, 8, 8), np.float32), "dtype is float32, expected uint8"),
    (np.zeros((8, 8), np.uint8), "expected 3-D"),
    (np.zeros((0, 8, 8), np.uint8), "at least 1 slice"),
])
def test_load_series_rejects_bad_arrays(tmp_path: Path, arr: np.ndarray, fragment: str) -> None:
    path = tmp_path / "0000.npy"
    np.save(path, arr)
    with pytest.raises(DatasetError, match=fragment) as info:
        load_series(path)
    assert str(path) in str(info.value)


def test_read_series_header_rejects_non_npy(tmp_path: Path) -> None:
    path = tmp_path / "0000.npy"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError, match="not a readable .npy"):
        read_series_header(path)


# --- tune split -----------------------------------------------------------------------------

def _cohort(n: int = 100, positives: int = 20) -> tuple[list[str], list[int]]:
    ids = [f"{i:04d}" for i in range(n)]
    labels = [1 if i % (n // positives) == 0 else 0 for i in range(n)]
    assert sum(labels) == positives
    return ids, labels


def test_tune_split_is_stratified_and_keeps_prevalence() -> None:
    ids, labels = _cohort()
    tune = tune_split(ids, labels, 0.25, seed=0)
    by_id = dict(zip(ids, labels))
    assert tune <= set(ids)
    assert sum(by_id[c] for c in tune) == 5  # 25% of 20 positives
    assert sum(1 - by_id[c] for c in tune) == 20  # 25% of 80 negatives
    rest = set(ids) - tune
    assert sum(by_id[c] for c in rest) / len(rest) == pytest.approx(0.2)
    assert all(isinstance(c, str) for c in tune)


def test_tune_split_is_seeded_and_order_free() -> None:
    ids, labels = _cohort()
    a = tune_split(ids, labels, 0.2, seed=1)
    assert tune_split(ids, labels, 0.2, seed=1) == a
    assert tune_split(ids, labels, 0.2, seed=2) != a
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    shuffled = tune_split([ids[i] for i in order], [labels[i] for i in order], 0.2, seed=1)
    assert shuffled == a


def test_tune_split_small_classes_keep_both_sides() -> None:
    ids = ["0000", "0001", "0002", "0003", "0004", "0005"]
    labels = [1, 1, 0, 0, 0, 0]
    tune = tune_split(ids, labels, 0.1, seed=0)
    # Each class of two or more gives one case to tune and keeps at least one for training.
    assert len(tune & {"0000", "0001"}) == 1
    assert len(tune & {"0002", "0003", "0004", "0005"}) == 1
    assert tune_split(ids, labels, 0.0, seed=0) == set()


def test_tune_split_leaves_global_rng_alone() -> None:
    ids, labels = _cohort()
    np.random.seed(123)
    state = np.random.get_state()
    py_state = random.getstate()
    tune_split(ids, labels, 0.3, seed=5)
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(state, after))
    assert random.getstate() == py_state


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_tune_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        tune_split(["0000", "0001"], [0, 1], fraction, seed=0)


def test_tune_split_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length"):
        tune_split(["0000", "0001"], [0], 0.5, seed=0)
