"""Dataset validation: the report of a good dataset, and one clear error per kind of bad data."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from mrnet import PLANES, SPLITS, TASKS
from mrnet.core.errors import DatasetError
from mrnet.data.reader import dataset_fingerprint, label_csv
from mrnet.data.validate import validate_dataset

PROJECT = Path(__file__).resolve().parents[1]


def _rows(root: Path, split: str, task: str) -> list[tuple[str, int]]:
    """A label CSV read independently of the code under test."""
    lines = label_csv(root, split, task).read_text().splitlines()
    return [(c, int(v)) for c, v in (line.split(",") for line in lines if line.strip())]


def _ids(root: Path, split: str) -> list[str]:
    return [c for c, _ in _rows(root, split, "abnormal")]


def _edit_csv(root: Path, split: str, task: str, edit: Callable[[list[str]], list[str]]) -> Path:
    path = label_csv(root, split, task)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    path.write_text("\n".join(edit(lines)) + "\n")
    return path


def _set_label(root: Path, split: str, task: str, case_id: str, value: int) -> None:
    _edit_csv(root, split, task, lambda lines: [
        f"{case_id},{value}" if line.split(",")[0] == case_id else line for line in lines])


def _series(root: Path, split: str, plane: str, index: int = 0) -> Path:
    return root / split / plane / f"{_ids(root, split)[index]}.npy"


# --- the good dataset -----------------------------------------------------------------------

def test_report_matches_the_files(tiny_dataset: Path) -> None:
    report = validate_dataset(tiny_dataset)
    assert set(report) == set(SPLITS)
    for split in SPLITS:
        r = report[split]
        ids = _ids(tiny_dataset, split)
        assert r["exams"] == len(ids)
        labels = {t: dict(_rows(tiny_dataset, split, t)) for t in TASKS}
        for task in TASKS:
            positives = sum(labels[task].values())
            assert r[task] == {"positives": positives,
                               "prevalence": round(positives / len(ids), 4)}
        odd = [c for c in ids if labels["abnormal"][c] == 0
               and (labels["acl"][c] or labels["meniscus"][c])]
        assert r["tear_without_abnormal"] == len(odd)
        for plane in PLANES:
            shapes = [np.load(tiny_dataset / split / plane / f"{c}.npy").shape for c in ids]
            slices = [s[0] for s in shapes]
            assert r[plane] == {
                "exams": len(ids),
                "slices_min": min(slices),
                "slices_median": float(np.median(slices)),
                "slices_max": max(slices),
                "height_min": 32, "height_max": 32, "width_min": 32, "width_max": 32,
                "size": "32x32",
            }


def test_report_is_what_dvc_metrics_shows(tiny_dataset: Path) -> None:
    # `dvc metrics show` keeps numbers and strings of nested dicts but drops lists.
    def leaves(obj: object) -> list[object]:
        if isinstance(obj, dict):
            return [leaf for v in obj.values() for leaf in leaves(v)]
        return [obj]

    report = validate_dataset(tiny_dataset)
    assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool)
               for v in leaves(report))
    assert json.loads(json.dumps(report)) == report


def test_validate_reads_headers_not_volumes(tiny_dataset: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate_dataset must not load volumes")

    for name in ("load", "fromfile", "memmap"):
        monkeypatch.setattr(np, name, refuse)
    assert validate_dataset(tiny_dataset)["train"]["axial"]["exams"] > 0


def test_allowed_variations(tiny_copy: Path) -> None:
    """Mixed image sizes, Fortran order and hidden files are accepted."""
    big = _series(tiny_copy, "valid", "axial", 1)
    np.save(big, np.zeros((3, 40, 36), np.uint8))
    fortran = _series(tiny_copy, "train", "coronal")
    np.save(fortran, np.asfortranarray(np.load(fortran)))
    (tiny_copy / "train" / "sagittal" / ".DS_Store").write_bytes(b"\x00\x01junk")
    report = validate_dataset(tiny_copy)
    axial = report["valid"]["axial"]
    assert axial["size"] == "mixed"
    assert (axial["height_min"], axial["height_max"]) == (32, 40)
    assert (axial["width_min"], axial["width_max"]) == (32, 36)
    assert report["train"]["coronal"]["size"] == "32x32"


def test_tear_without_abnormal_is_a_counted_warning(tiny_copy: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    case_id = _ids(tiny_copy, "train")[1]
    _set_label(tiny_copy, "train", "abnormal", case_id, 0)
    _set_label(tiny_copy, "train", "acl", case_id, 1)
    with caplog.at_level(logging.WARNING, logger="mrnet.data.validate"):
        report = validate_dataset(tiny_copy)
    assert report["train"]["tear_without_abnormal"] == 1
    assert report["valid"]["tear_without_abnormal"] == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and case_id in warnings[0].getMessage()
    assert "train" in warnings[0].getMessage()


# --- bad data: each mutation of a good copy and what the one-line error must name ----------

def _root_missing(root: Path) -> list[str]:
    shutil.rmtree(root)
    return [str(root), "dataset folder not found"]


def _split_missing(root: Path) -> list[str]:
    shutil.rmtree(root / "valid")
    return [str(root / "valid"), "split folder not found"]


def _plane_missing(root: Path) -> list[str]:
    shutil.rmtree(root / "train" / "coronal")
    return [str(root / "train" / "coronal"), "plane folder not found"]


def _csv_missing(root: Path) -> list[str]:
    label_csv(root, "valid", "acl").unlink()
    return [str(label_csv(root, "valid", "acl")), "label CSV not found"]


def _series_missing(root: Path) -> list[str]:
    path = _series(root, "train", "sagittal", 2)
    path.unlink()
    return [str(path), f"case {path.stem}", "sagittal", "series not found"]


def _series_unlabelled(root: Path) -> list[str]:
    path = root / "train" / "axial" / "9999.npy"
    shutil.copy(_series(root, "train", "axial"), path)
    return [str(path), "case 9999 has no label"]


def _series_in_wrong_split(root: Path) -> list[str]:
    src = _series(root, "train", "axial")
    path = root / "valid" / "axial" / src.name
    shutil.copy(src, path)
    return [str(path), f"case {src.stem} has no label in the valid CSVs"]


def _random_bytes(root: Path) -> list[str]:
    path = _series(root, "valid", "coronal", 1)
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return [str(path), "not a readable .npy"]


def _truncated_data(root: Path) -> list[str]:
    path = _series(root, "train", "axial", 1)
    path.write_bytes(path.read_bytes()[:-7])
    return [str(path), "truncated"]


def _truncated_header(root: Path) -> list[str]:
    path = _series(root, "train", "axial", 1)
    path.write_bytes(path.read_bytes()[:30])
    return [str(path), "not a readable .npy"]


def _trailing_bytes(root: Path) -> list[str]:
    path = _series(root, "valid", "sagittal")
    path.write_bytes(path.read_bytes() + b"\x00" * 5)
    return [str(path), "5 unexpected bytes"]


def _not_3d(root: Path) -> list[str]:
    path = _series(root, "train", "sagittal", 3)
    np.save(path, np.zeros((32, 32), np.uint8))
    return [str(path), "expected 3-D"]


def _not_uint8(root: Path) -> list[str]:
    path = _series(root, "train", "sagittal", 3)
    np.save(path, np.zeros((3, 32, 32), np.int16))
    return [str(path), "dtype is int16, expected uint8"]


def _zero_slices(root: Path) -> list[str]:
    path = _series(root, "valid", "axial", 2)
    np.save(path, np.zeros((0, 32, 32), np.uint8))
    return [str(path), "at least 1 slice"]


def _label_2(root: Path) -> list[str]:
    case_id = _ids(root, "train")[1]
    _set_label(root, "train", "acl", case_id, 2)
    return [f"{label_csv(root, 'train', 'acl')}:2:", f"case {case_id} has label '2'"]


def _duplicate_id(root: Path) -> list[str]:
    n = len(_ids(root, "valid"))
    path = _edit_csv(root, "valid", "abnormal", lambda lines: lines + [lines[0]])
    return [f"{path}:{n + 1}:", f"case {_ids(root, 'valid')[0]} is listed twice"]


def _header_row(root: Path) -> list[str]:
    path = _edit_csv(root, "train", "abnormal", lambda lines: ["case,label"] + lines)
    return [f"{path}:1:", "header row"]


def _csvs_disagree(root: Path) -> list[str]:
    last = _ids(root, "valid")[-1]
    path = _edit_csv(root, "valid", "meniscus", lambda lines: lines[:-1])
    return [str(path), f"case {last} is missing", "valid-abnormal.csv"]


def _unpadded_ids(root: Path) -> list[str]:
    # What pandas.read_csv followed by to_csv does to MRNet ids.
    for task in TASKS:
        _edit_csv(root, "train", task, lambda lines: [
            f"{int(c)},{v}" for c, v in (line.split(",") for line in lines)])
    return [str(label_csv(root, "train", "abnormal")), "case id '0'", "4 zero-padded digits"]


def _shared_case(root: Path) -> list[str]:
    case_id = _ids(root, "train")[0]
    for task in TASKS:
        label = dict(_rows(root, "train", task))[case_id]
        _edit_csv(root, "valid", task, lambda lines: lines + [f"{case_id},{label}"])
    for plane in PLANES:
        shutil.copy(root / "train" / plane / f"{case_id}.npy", root / "valid" / plane)
    return [f"case {case_id}", "both", "train-abnormal.csv", "valid-abnormal.csv"]


def _foreign_file(root: Path) -> list[str]:
    path = root / "train" / "axial" / "notes.txt"
    path.write_text("scanner settings")
    return [str(path), "unexpected file"]


def _short_id_file(root: Path) -> list[str]:
    path = root / "valid" / "coronal" / "12.npy"
    shutil.copy(_series(root, "valid", "coronal"), path)
    return [str(path), "unexpected file"]


def _backup_file(root: Path) -> list[str]:
    src = _series(root, "train", "sagittal")
    path = src.with_name(src.name + ".bak")
    shutil.copy(src, path)
    return [str(path), "unexpected file"]


def _subfolder(root: Path) -> list[str]:
    path = root / "train" / "coronal" / "old"
    path.mkdir()
    return [str(path), "unexpected entry"]


BAD = {f.__name__.lstrip("_"): f for f in [
    _root_missing, _split_missing, _plane_missing, _csv_missing, _series_missing,
    _series_unlabelled, _series_in_wrong_split, _random_bytes, _truncated_data,
    _truncated_header, _trailing_bytes, _not_3d, _not_uint8, _zero_slices, _label_2,
    _duplicate_id, _header_row, _csvs_disagree, _unpadded_ids, _shared_case, _foreign_file,
    _short_id_file, _backup_file, _subfolder,
]}


@pytest.mark.parametrize("name", BAD)
def test_bad_data_fails_with_one_line(tiny_copy: Path, name: str) -> None:
    fragments = BAD[name](tiny_copy)
    with pytest.raises(DatasetError) as info:
        validate_dataset(tiny_copy)
    msg = str(info.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg


# --- the stage, as DVC runs it --------------------------------------------------------------

OLD_REPORT = b'{"train": {"exams": 1}}\n'


@pytest.fixture
def project(tiny_copy: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory like the project root: params.yaml naming the tiny copy, and an
    earlier reports/dataset.json. The dataset is at the relative path ``MRNet-v1.0``."""
    proj = tiny_copy.parent
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["root"] = tiny_copy.name
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (proj / "reports").mkdir()
    (proj / "reports" / "dataset.json").write_bytes(OLD_REPORT)
    monkeypatch.chdir(proj)
    return proj


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "stages.validate"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_writes_report(project: Path) -> None:
    proc = _run_stage(project)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((project / "reports" / "dataset.json").read_text())
    fingerprint, synthetic = written.pop("fingerprint"), written.pop("synthetic")
    assert written == validate_dataset("MRNet-v1.0")
    assert fingerprint == dataset_fingerprint(project / "MRNet-v1.0") and synthetic is True
    assert str((project / "MRNet-v1.0").resolve()) in proc.stderr  # the resolved root is logged
    assert "error:" not in proc.stderr
    assert not list((project / "metrics").glob(".*.tmp"))


@pytest.mark.parametrize("name", ["root_missing", "series_missing", "truncated_data",
                                  "label_2", "foreign_file"])
def test_stage_bad_data_keeps_old_report(project: Path, name: str) -> None:
    fragments = BAD[name](Path("MRNet-v1.0"))  # relative, as the stage names it
    proc = _run_stage(project)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]]
    for fragment in fragments:
        assert fragment in errors[0]
    assert (project / "reports" / "dataset.json").read_bytes() == OLD_REPORT


def test_stage_warns_on_tear_without_abnormal(project: Path) -> None:
    root = Path("MRNet-v1.0")
    case_id = _ids(root, "valid")[0]
    _set_label(root, "valid", "abnormal", case_id, 0)
    _set_label(root, "valid", "meniscus", case_id, 1)
    proc = _run_stage(project)
    assert proc.returncode == 0, proc.stderr
    assert any("WARNING" in line and case_id in line for line in proc.stderr.splitlines())
    written = json.loads((project / "reports" / "dataset.json").read_text())
    assert written["valid"]["tear_without_abnormal"] == 1


def test_fingerprint_follows_labels_and_series(tiny_copy: Path) -> None:
    before = dataset_fingerprint(tiny_copy)
    assert dataset_fingerprint(tiny_copy) == before  # stable
    csv = tiny_copy / "valid-acl.csv"
    first, *rest = csv.read_text().splitlines()
    case, label = first.split(",")
    csv.write_text("\n".join([f"{case},{1 - int(label)}", *rest]) + "\n")
    flipped = dataset_fingerprint(tiny_copy)
    assert flipped != before
    series = next((tiny_copy / "train" / "axial").glob("*.npy"))
    series.write_bytes(series.read_bytes() + b"\0")
    assert dataset_fingerprint(tiny_copy) != flipped
