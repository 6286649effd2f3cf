"""Hostile and odd inputs: each ends in the right output or one line naming the file or key,
with nothing run and nothing written or overwritten."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECT
from test_dicom import AXIAL, CORONAL, SAGITTAL, write_exam

from mrnet.config import load_params
from mrnet.core.errors import DatasetError, ParamsError
from mrnet.core.io import atomic_dir, write_text
from mrnet.core.params import parse_yaml
from mrnet.data.dicom import DicomError, import_exam
from mrnet.mura.config import load_params as load_mura_params


def edited(text: str, section: str, key: str, value: str) -> str:
    """``text`` of a params file with ``section``'s line ``key: ...`` set to ``value``."""
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    for i in range(start + 1, len(lines)):
        m = re.match(rf"^(\s+){re.escape(key)}:", lines[i])
        if m:
            lines[i] = f"{m.group(1)}{key}: {value}"
            return "\n".join(lines) + "\n"
        if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#"):
            break
    raise AssertionError(f"no {section}.{key} in the params file")


def params_with(tmp_path: Path, section: str, key: str, value: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(edited((PROJECT / "params.yaml").read_text(), section, key, value))
    return path


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("section, key, name", [
    ("train", "lr", "train.lr"), ("train", "weight_decay", "train.weight_decay"),
    ("train", "rotation", "train.augment.rotation"), ("ensemble", "C", "ensemble.C"),
    ("kneemri", "roi_scale", "kneemri.roi_scale")])
def test_non_finite_number_is_refused_naming_the_key(tmp_path: Path, section: str, key: str,
                                                     name: str, value: str) -> None:
    path = params_with(tmp_path, section, key, value)
    with pytest.raises(ParamsError, match=rf"^params key {re.escape(name)} must be a finite "
                                          r"number, got -?(nan|inf)$"):
        load_params(path)


def test_non_finite_number_is_refused_in_mura_params(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(edited((PROJECT / "mura" / "params.yaml").read_text(), "train", "lr",
                           ".nan"))
    with pytest.raises(ParamsError, match=r"params key train\.lr must be a finite number"):
        load_mura_params(path)


def test_non_finite_number_in_a_task_override_is_refused(tmp_path: Path) -> None:
    path = params_with(tmp_path, "task", "acl", "{lr: .inf}")
    with pytest.raises(ParamsError, match=r"params key task\.acl\.lr must be a finite number"):
        load_params(path)


def test_leading_zero_int_is_decimal_as_dvc_reads_it(tmp_path: Path) -> None:
    # YAML 1.1 reads 010 as octal 8; DVC (YAML 1.2) records 10. Training must run what DVC
    # records.
    assert load_params(params_with(tmp_path, "train", "epochs", "010")).train.epochs == 10


@pytest.mark.parametrize("word", ["no", "yes", "off", "on", "No"])
def test_yaml11_boolean_words_are_strings_hence_a_type_error(tmp_path: Path, word: str) -> None:
    path = params_with(tmp_path, "model", "pretrained", word)
    with pytest.raises(ParamsError, match=rf"^params key model\.pretrained must be true or "
                                          rf"false, got '{word}'$"):
        load_params(path)


def test_duplicate_key_is_refused_naming_key_file_and_line(tmp_path: Path) -> None:
    original = (PROJECT / "params.yaml").read_text()
    text = re.sub(r"^(  epochs: \d+\n)", r"\1  epochs: 3\n", original, count=1, flags=re.M)
    assert text != original, "params.yaml has no two-space-indented epochs line to repeat"
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = text.splitlines().index("  epochs: 3") + 1
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}:{line}: duplicate key "
                                          r"'epochs' in the mapping that starts at line \d+"):
        load_params(path)


def test_duplicate_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text() + "\ntrain:\n  epochs: 2\n")
    with pytest.raises(ParamsError, match=r"duplicate key 'train'"):
        load_params(path)


# Documents on which YAML 1.1 and YAML 1.2 readers disagree, or that a careless reader takes.
TRICKY = [
    "a: 010\n", "a: 08\n", "a: 0o17\n", "a: 0x1F\n", "a: 1_000\n", "a: 1e-5\n", "a: 1E+3\n",
    "a: 1.0e-05\n", "a: .5\n", "a: 1.\n", "a: +7\n", "a: -0\n", "a: 1:20\n", "a: no\n",
    "a: Yes\n", "a: ON\n", "a: true\n", "a: False\n", "a: ~\n", "a: null\n", "a: ''\n",
    "a: .nan\n", "a: -.inf\n", "a: 0b101\n", "a: '010'\n", "a: [1, 010, no]\n",
    "a: {b: 010, c: off}\n", "a: 2024-01-02\n", "a: &x 5\nb: *x\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_loader_reads_what_dvc_reads(text: str) -> None:
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    ours = parse_yaml(text, "params.yaml")
    theirs = dvc_parse_yaml(text, "params.yaml")

    def same(a: object, b: object) -> bool:
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("text", ["a: 1\na: 2\n", "a:\n  b: 1\n  b: 1\n", "a: [1\n",
                                  "a: 'x\n", "- a\nb: 1\n"])
def test_loader_refuses_what_dvc_refuses(text: str) -> None:
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml
    from dvc.utils.serialize import ParseError as DvcYamlError

    with pytest.raises(DvcYamlError):
        dvc_parse_yaml(text, "params.yaml")
    with pytest.raises(ParamsError, match=r"^params\.yaml:\d+: (duplicate key|not valid YAML)"):
        parse_yaml(text, "params.yaml")


def test_bad_params_stop_a_stage_in_one_line_before_it_writes(tmp_path: Path) -> None:
    params_with(tmp_path, "train", "lr", ".nan")
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    run = subprocess.run([sys.executable, str(PROJECT / "stages" / "validate.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == \
        "error: params key train.lr must be a finite number, got nan"
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path: Path,
                                                                    umask: int) -> None:
    old = os.umask(umask)
    try:
        write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~umask
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o640)
        write_text(tmp_path / "kept.txt", "new")
        assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o640
        assert (tmp_path / "kept.txt").read_text() == "new"
    finally:
        os.umask(old)


def test_atomic_dir_refuses_a_file_and_keeps_the_folder_mode(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError):
        with atomic_dir(tmp_path / "file"):
            raise AssertionError("must not be reached")
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o750)
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750


# ---------------------------------------------------------------- predict outputs


@pytest.fixture
def series_list(tmp_path: Path) -> Path:
    """An MRNet input list of one case whose series are valid MRNet volumes."""
    lines = []
    for plane in ("sagittal", "coronal", "axial"):
        (tmp_path / "valid" / plane).mkdir(parents=True)
        np.save(tmp_path / "valid" / plane / "1130.npy", np.zeros((3, 256, 256), np.uint8))
        lines.append(f"valid/{plane}/1130.npy")
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "in.csv"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, named", [
    (["in.csv", "in.csv"], "in.csv: OUTPUT_CSV is the input CSV"),
    (["in.csv", "./sub/../in.csv"], "OUTPUT_CSV is the input CSV"),
    (["in.csv", "valid/sagittal/1130.npy"],
     "valid/sagittal/1130.npy: OUTPUT_CSV is the sagittal series of case 1130"),
    (["in.csv", "out.csv", "--calls", "valid/axial/1130.npy"],
     "valid/axial/1130.npy: --calls is the axial series of case 1130"),
    (["in.csv", "out.csv", "--calls", "in.csv"], "in.csv: --calls is the input CSV"),
    (["in.csv", "out.csv", "--calls", "./out.csv"], "--calls names the same file as OUTPUT_CSV"),
    (["in.csv", "link.npy"], "link.npy: OUTPUT_CSV is the coronal series of case 1130"),
    (["in.csv", "hard.npy"], "hard.npy: OUTPUT_CSV is the coronal series of case 1130"),
    (["in.csv", "params.yaml", "--params", "params.yaml"],
     "params.yaml: OUTPUT_CSV is the params file"),
    (["--exam", "valid/sagittal/1130.npy", "valid/coronal/1130.npy", "valid/axial/1130.npy",
      "--json", "valid/coronal/1130.npy"], "--json is the coronal series of case 1130"),
    (["--exam", "valid/sagittal/1130.npy", "valid/coronal/1130.npy", "valid/axial/1130.npy",
      "--viewer", "valid/axial/1130.npy"], "--viewer is the axial series of case 1130"),
])
def test_predict_never_writes_over_what_it_reads(series_list: Path, argv: list[str],
                                                 named: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from mrnet.inference.predict import main

    tmp = series_list.parent
    (tmp / "sub").mkdir()
    (tmp / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    (tmp / "link.npy").symlink_to(tmp / "valid" / "coronal" / "1130.npy")
    os.link(tmp / "valid" / "coronal" / "1130.npy", tmp / "hard.npy")
    before = snapshot(tmp)
    monkeypatch.chdir(tmp)
    with pytest.raises(SystemExit) as exc:
        # Were the outputs not checked first, the missing models would be the error.
        models = [] if "--params" in argv else ["--models", "no-models-here"]
        main(["--allow-synthetic", *models, *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert "destroy" in err[0] or "same file" in err[0]
    assert snapshot(tmp) == before  # nothing written, nothing replaced, no temp file left


EXAM = ["--exam", "valid/sagittal/1130.npy", "valid/coronal/1130.npy", "valid/axial/1130.npy"]


@pytest.mark.parametrize("argv, named", [
    # --calls: only with INPUT_CSV OUTPUT_CSV, only a file, only after every series is checked.
    ([*EXAM, "--calls", "calls.csv", "--json", "r.json"],
     "--calls goes with INPUT_CSV OUTPUT_CSV"),
    (["in.csv", "out.csv", "--calls", "sub"], "sub: is a folder; --calls must be a file path"),
    (["bad.csv", "out.csv", "--calls", "calls.csv"],
     "case 1130 (coronal): float/coronal/1130.npy: dtype is float32"),
    # --exam: a damaged series, a missing plane, a wrong count of paths, a doubled plane.
    ([*EXAM[:2], "float/coronal/1130.npy", EXAM[3], "--json", "r.json", "--viewer", "v.html"],
     "case 1130 (coronal): float/coronal/1130.npy: dtype is float32"),
    (["--exam", "noaxial", "--json", "r.json"], "noaxial: no exam found; --exam takes"),
    ([*EXAM[:3], "--json", "r.json"], "--exam got 2 paths"),
    ([*EXAM[:3], "valid/sagittal/1130.npy", "--json", "r.json"],
     "valid/sagittal/1130.npy: a second sagittal series"),
])
def test_predict_refuses_bad_calls_and_exam_input_and_writes_nothing(
        series_list: Path, argv: list[str], named: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from mrnet.inference.predict import main

    tmp = series_list.parent
    (tmp / "sub").mkdir()
    (tmp / "float" / "coronal").mkdir(parents=True)
    np.save(tmp / "float" / "coronal" / "1130.npy", np.zeros((3, 256, 256), np.float32))
    (tmp / "bad.csv").write_text(series_list.read_text().replace("valid/coronal",
                                                                 "float/coronal"))
    for plane in ("sagittal", "coronal"):  # a folder of two of the three planes
        (tmp / "noaxial" / plane).mkdir(parents=True)
        np.save(tmp / "noaxial" / plane / "1130.npy", np.zeros((3, 256, 256), np.uint8))
    before = snapshot(tmp)
    monkeypatch.chdir(tmp)
    with pytest.raises(SystemExit) as exc:
        # Were the inputs not checked first, the missing models would be the error.
        main(["--allow-synthetic", "--models", "no-models-here", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert snapshot(tmp) == before  # nothing written, nothing replaced, no temp file left


def test_exam_folder_names_the_extra_files_and_skips_hidden_ones(tmp_path: Path) -> None:
    from mrnet.core.errors import UserError
    from mrnet.inference.predict import exam_files

    for plane in ("axial", "coronal", "sagittal"):
        (tmp_path / plane).mkdir()
        (tmp_path / plane / "1130.npy").write_bytes(b"")
        (tmp_path / plane / "._1130.npy").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble
    case = exam_files([str(tmp_path)])
    assert case.case_id == "1130"
    assert case.paths["axial"] == tmp_path / "axial" / "1130.npy"
    (tmp_path / "axial" / "1131.npy").write_bytes(b"")
    with pytest.raises(UserError, match=r"axial: holds 2 \.npy files \(1130\.npy, 1131\.npy\);"):
        exam_files([str(tmp_path)])


# ---------------------------------------------------------------- import-dicom output


@pytest.fixture(scope="module")
def scanner_exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scanner") / "knee"
    write_exam(folder, series=SMALL_EXAM, localizer=False)
    return folder


SMALL_EXAM = [(3, "SAG T2", SAGITTAL, 4, (32, 32), (2.0, 2.0)),
              (5, "COR T1", CORONAL, 4, (32, 32), (2.0, 2.0)),
              (7, "AX PD", AXIAL, 4, (32, 32), (2.0, 2.0))]


def test_import_into_a_regular_file_is_one_error(scanner_exam: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    from mrnet.cli import cmd_import_dicom

    (tmp_path / "out").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        cmd_import_dicom([str(scanner_exam), str(tmp_path / "out"), "--size", "32"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'out'}: exists and is not a folder; OUT_DIR is the folder the "
        "three series and dicom.json go to"]
    assert (tmp_path / "out").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["foreign", "exam", "parent"])
def test_import_never_replaces_a_folder_that_is_not_an_import(scanner_exam: Path,
                                                              tmp_path: Path,
                                                              where: str) -> None:
    if where == "foreign":
        out = tmp_path / "home"
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        match = r"holds 'thesis\.tex', which no import wrote"
    else:
        out = scanner_exam if where == "exam" else scanner_exam.parent
        match = r"is the exam folder .* or holds it"
    before = snapshot(out)
    with pytest.raises(DicomError, match=match):
        import_exam(scanner_exam, out, size=32)
    assert snapshot(out) == before


def test_a_failed_reimport_leaves_the_earlier_import_whole(scanner_exam: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mrnet.data import dicom

    out = tmp_path / "out"
    import_exam(scanner_exam, out, size=32)
    before = snapshot(out)
    assert sorted(before) == ["axial.npy", "coronal.npy", "dicom.json", "sagittal.npy"]

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dicom, "write_json", disk_full)  # after the three series are written
    with pytest.raises(OSError):
        import_exam(scanner_exam, out, size=64)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left
    monkeypatch.undo()
    import_exam(scanner_exam, out, size=64)  # an earlier import is replaced whole
    assert np.load(out / "axial.npy").shape == (4, 64, 64)
    assert json.loads((out / "dicom.json").read_text())["image_size"] == 64


# ---------------------------------------------------------------- DICOM: no silent wrong output


def fresh_exam(tmp_path: Path, series: list = SMALL_EXAM) -> Path:
    folder = tmp_path / "exam"
    write_exam(folder, series=series, localizer=False)
    return folder


def slices_of(folder: Path, number: int) -> list[Path]:
    """The files of series ``number`` in anatomical order (write_exam's positions rise)."""
    import pydicom

    found = []
    for p in folder.rglob("IM*"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.SeriesNumber == number:
            found.append((float(sum(ds.ImagePositionPatient)), p))  # one axis is non-zero
    return [p for _, p in sorted(found)]


def set_tags(path: Path, **values: object) -> None:
    import warnings

    import pydicom

    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the invalid values we want
        for name, value in values.items():
            setattr(ds, name, value)
        ds.save_as(path, enforce_file_format=True)


def refused(folder: Path, out: Path, match: str, **kwargs: object) -> str:
    with pytest.raises(DicomError) as info:
        import_exam(folder, out, size=32, **kwargs)
    message = str(info.value)
    assert re.search(match, message), message
    assert "\n" not in message
    assert not out.exists()
    return message


@pytest.mark.parametrize("keep", [700, 300, 140])
def test_a_slice_cut_in_its_header_is_named_not_skipped(tmp_path: Path, keep: int) -> None:
    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 5)[1]
    victim.write_bytes(victim.read_bytes()[:keep])
    message = refused(folder, tmp_path / "out", rf"^{re.escape(str(victim))}: ")
    assert "cut short" in message and "re-export" in message


def test_a_slice_cut_in_its_pixels_is_named_as_damaged(tmp_path: Path) -> None:
    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 7)[2]
    victim.write_bytes(victim.read_bytes()[:-100])
    message = refused(folder, tmp_path / "out", rf"^{re.escape(str(victim))}: the pixel data "
                                                r"of series 7 'AX PD' is damaged or cut short")
    assert "decoder" not in message


def test_a_missing_slice_is_a_gap_not_a_shorter_series(tmp_path: Path) -> None:
    folder = fresh_exam(tmp_path)
    files = slices_of(folder, 3)
    files[1].unlink()
    refused(folder, tmp_path / "out",
            rf"series 3 'SAG T2' \(sagittal\): a spacing of 7\.00 mm between {files[0].name} "
            rf"and {files[2].name} .* series' spacing is 3\.50 mm, 1 slice\(s\) missing\?; "
            r"re-export the series$")


def test_a_gap_names_the_other_series_of_the_plane(tmp_path: Path) -> None:
    two = [*SMALL_EXAM, (4, "SAG PD", SAGITTAL, 4, (32, 32), (2.0, 2.0))]
    folder = fresh_exam(tmp_path, two)
    slices_of(folder, 3)[2].unlink()
    refused(folder, tmp_path / "out", r"choose another sagittal series with --series "
                                      r"\(series 4 'SAG PD'\)$")
    # ... and that choice imports.
    import_exam(folder, tmp_path / "out", series=["4"], size=32)
    assert np.load(tmp_path / "out" / "sagittal.npy").shape == (4, 32, 32)


@pytest.mark.parametrize("shift, ok", [(0.05, True), (1.0, False)])
def test_irregular_spacing_beyond_the_tolerance_is_refused(tmp_path: Path, shift: float,
                                                           ok: bool) -> None:
    import pydicom

    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 7)[1]
    pos = [float(v) for v in pydicom.dcmread(victim).ImagePositionPatient]
    set_tags(victim, ImagePositionPatient=[pos[0], pos[1], pos[2] + shift])
    if ok:  # header rounding: within the stated tolerance
        import_exam(folder, tmp_path / "out", size=32)
        assert np.load(tmp_path / "out" / "axial.npy").shape == (4, 32, 32)
    else:
        refused(folder, tmp_path / "out", r"series 7 'AX PD' \(axial\): a spacing of 4\.50 mm")


@pytest.mark.parametrize("tag, value, match", [
    ("ImagePositionPatient", ["nan", "nan", "nan"], r"ImagePositionPatient \[nan, nan, nan\] "
                                                    r"is not finite"),
    ("ImagePositionPatient", [0.0, "inf", 0.0], r"ImagePositionPatient .*inf.* is not finite"),
    ("PixelSpacing", [0.0, 0.0], r"PixelSpacing \[0\.0, 0\.0\] \(needs two positive numbers"),
    ("PixelSpacing", [-2.0, -2.0], r"PixelSpacing \[-2\.0, -2\.0\] \(needs two positive"),
    ("PixelSpacing", ["nan", 2.0], r"PixelSpacing \[nan, 2\.0\]"),
])
def test_bad_geometry_of_one_slice_is_named(tmp_path: Path, tag: str, value: list,
                                            match: str) -> None:
    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 5)[2]
    set_tags(victim, **{tag: value})
    refused(folder, tmp_path / "out", rf"series 5 'COR T1' \(coronal\): {victim.name} has "
                                      rf"{match}")


def test_a_non_finite_orientation_leaves_no_usable_series(tmp_path: Path) -> None:
    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 7)[0]
    set_tags(victim, ImageOrientationPatient=["nan", 0, 0, 0, 1, 0])
    refused(folder, tmp_path / "out",
            rf"no usable axial series .*series 7 'AX PD' "
            rf"\(ImageOrientationPatient is not finite in {victim.name}\)")


@pytest.mark.parametrize("tag, value, match", [
    ("RescaleSlope", "nan", r"RescaleSlope nan in series 3 'SAG T2' is not finite"),
    ("RescaleIntercept", "-inf", r"RescaleIntercept -inf in series 3 'SAG T2' is not finite"),
    ("RescaleSlope", "0", r"RescaleSlope 0 in series 3 'SAG T2' would make every pixel"),
])
def test_bad_rescale_is_named(tmp_path: Path, tag: str, value: str, match: str) -> None:
    folder = fresh_exam(tmp_path)
    victim = slices_of(folder, 3)[3]
    set_tags(victim, **{tag: value})
    refused(folder, tmp_path / "out", rf"^{re.escape(str(victim))}: {match}")


def test_a_huge_matrix_is_refused_before_allocating(tmp_path: Path) -> None:
    import tracemalloc

    folder = fresh_exam(tmp_path)
    for p in slices_of(folder, 7):
        set_tags(p, Rows=65535, Columns=65535)
    tracemalloc.start()
    try:
        refused(folder, tmp_path / "out", r"series 7 'AX PD' \(axial\): IM\w+ has a matrix of "
                                          r"65535 x 65535 \(Rows x Columns; at most 4096")
        assert tracemalloc.get_traced_memory()[1] < 200 * 2**20  # no 96 GiB, no 1 GiB
    finally:
        tracemalloc.stop()


def test_dicom_errors_leave_an_earlier_import_and_exit_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mrnet.cli import cmd_import_dicom

    folder = fresh_exam(tmp_path)
    out = tmp_path / "out"
    import_exam(folder, out, size=32)
    before = snapshot(out)
    set_tags(slices_of(folder, 3)[0], RescaleSlope="nan")
    with pytest.raises(SystemExit) as exc:
        cmd_import_dicom([str(folder), str(out), "--size", "32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "RescaleSlope nan" in err[0]
    assert snapshot(out) == before


# ---------------------------------------------------------------- KneeMRI pickles and metadata


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int32, ">i2"])
def test_numpy_pickles_of_every_protocol_load(tmp_path: Path, protocol: int, dtype) -> None:
    from mrnet.kneemri.reader import load_pickled_array

    arr = (np.arange(2 * 5 * 7) * 37 % 4096).astype(dtype).reshape(2, 5, 7)
    path = tmp_path / "re-saved.pck"
    data = pickle.dumps(arr, protocol=protocol)
    path.write_bytes(data)
    out = load_pickled_array(path)
    # What pickle.loads itself gives (numpy returns '>i2' data as native int16).
    assert out.dtype == pickle.loads(data).dtype  # noqa: S301 (our own pickle)
    assert np.array_equal(out, arr)
    fortran = np.asfortranarray(arr)
    path.write_bytes(pickle.dumps(fortran, protocol=protocol))
    assert np.array_equal(load_pickled_array(path), arr)


def _pickle_int(n: int) -> bytes:
    return b"J" + n.to_bytes(4, "little", signed=True)


# Hand-written pickles that stay inside the allowed globals but ask for an array of any size.
BARE_NDARRAY = (b"cnumpy\nndarray\n((" + _pickle_int(1000) + _pickle_int(1024)
                + _pickle_int(1024) + b"ttR.")
BIG_RECONSTRUCT = (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n("
                   + _pickle_int(1000) + _pickle_int(1024) + _pickle_int(1024)
                   + b"tC\x01btR.")


def _frombuffer_pickle(nbytes: int, shape: tuple[int, ...], dtype: str = "u1") -> bytes:
    shape_ops = b"".join(_pickle_int(n) for n in shape)
    return (b"cnumpy._core.numeric\n_frombuffer\n(C" + bytes([nbytes]) + bytes(nbytes)
            + b"cnumpy\ndtype\n(X" + len(dtype).to_bytes(4, "little") + dtype.encode()
            + b"\x89\x88tR(" + shape_ops + b"tX\x01\x00\x00\x00CtR.")


def _setstate_pickle(nbytes: int, shape: tuple[int, ...]) -> bytes:
    shape_ops = b"".join(_pickle_int(n) for n in shape)
    return (BIG_RECONSTRUCT.replace(b"(" + _pickle_int(1000) + _pickle_int(1024)
                                    + _pickle_int(1024) + b"t", b"(" + _pickle_int(0) + b"t")
            [:-1] + b"(" + _pickle_int(1) + b"(" + shape_ops + b"tcnumpy\ndtype\n(X\x02\x00\x00"
            b"\x00u1\x89\x88tR\x89C" + bytes([nbytes]) + bytes(nbytes) + b"tb.")


@pytest.mark.parametrize("data, match", [
    (BARE_NDARRAY, r"refused a bare numpy\.ndarray construction"),
    (BIG_RECONSTRUCT, r"refused _reconstruct\(.*\(1000, 1024, 1024\)\)"),
    (_frombuffer_pickle(16, (1000, 1024, 1024)), r"refused an array of shape \(1000, 1024, "
                                                 r"1024\) \(uint8\) from 16 bytes of data"),
    (_frombuffer_pickle(16, (4, 4), "O"), r"refused an array of dtype object"),
    (_setstate_pickle(16, (1000, 1024, 1024)), r"not a readable pickled numpy array \(ValueError"),
])
def test_pickles_that_claim_more_than_their_bytes_are_refused(tmp_path: Path, data: bytes,
                                                              match: str) -> None:
    import tracemalloc

    from mrnet.kneemri.reader import load_pickled_array

    path = tmp_path / "vol01" / "1-1.pck"
    path.parent.mkdir()
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: {match}") as info:
            load_pickled_array(path)
        assert tracemalloc.get_traced_memory()[1] < 50 * 2**20  # nothing of 1 GiB was made
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)


def test_hand_written_pickles_are_well_formed(tmp_path: Path) -> None:
    # The hostile pickles above differ from sound ones only in the sizes they claim.
    from mrnet.kneemri.reader import load_pickled_array

    path = tmp_path / "a.pck"
    path.write_bytes(_frombuffer_pickle(16, (4, 4)))
    assert load_pickled_array(path).shape == (4, 4)
    path.write_bytes(_setstate_pickle(12, (3, 4)))
    assert load_pickled_array(path).shape == (3, 4)


@pytest.mark.parametrize("value", ["--1", "²", "1.5", "+-2", "٣", " "])
def test_metadata_integer_errors_name_the_line(tmp_path: Path, value: str) -> None:
    from mrnet.kneemri.reader import COLUMNS, read_metadata

    good = ["1", "1", "0", "0", "10", "10", "2", "20", "20", "3", "1-1.pck"]
    lines = [",".join(COLUMNS), ",".join(good),
             ",".join(["2", *good[1:4], value, *good[5:10], "2-1.pck"])]
    (tmp_path / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(tmp_path / 'metadata.csv'))}:3: "
                                           r"(roiX must be an integer|.*empty)"):
        read_metadata(tmp_path)


# ---------------------------------------------------------------- MURA image bombs


def _chunk(kind: bytes, data: bytes) -> bytes:
    import zlib

    return (len(data).to_bytes(4, "big") + kind + data
            + zlib.crc32(kind + data).to_bytes(4, "big"))


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels, with one row of data."""
    import zlib

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(bytes(width + 1))) + _chunk(b"IEND", b""))


def _ztxt_bomb(tmp_path: Path) -> bytes:
    import zlib

    from PIL import Image

    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / "ok.png")
    good = (tmp_path / "ok.png").read_bytes()
    at = 8 + 25  # after the signature and IHDR
    bomb = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(64 * 2**20), 9))
    return good[:at] + bomb + good[at:]


@pytest.mark.parametrize("kind", ["30000x30000", "9000x8000", "ztxt"])
def test_mura_image_bombs_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    import tracemalloc
    import warnings

    from mrnet.mura.data import image_info, load_view

    path = tmp_path / "image1.png"
    if kind == "ztxt":
        path.write_bytes(_ztxt_bomb(tmp_path))
        match = r"not a readable PNG image \(.*(Too Large|too large)"
    else:
        w, h = (int(v) for v in kind.split("x"))
        path.write_bytes(_png_header_claiming(w, h))
        # Past twice PIL's own limit PIL refuses it first; below that, our limit names the size.
        match = r"a PNG of more pixels than a radiograph can have, refused as a decompression bomb"
        if w * h < 2 * 89478485:
            match = rf"a PNG of {w} x {h} pixels, more than the {2**26} a radiograph can have"
    for read in (image_info, load_view):
        tracemalloc.start()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no DecompressionBombWarning either
                with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}: {match}") \
                        as info:
                    read(path)
            assert tracemalloc.get_traced_memory()[1] < 100 * 2**20
        finally:
            tracemalloc.stop()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the rows above, through commands


def run_stage(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """A stage entry point as DVC runs it: from ``cwd``, reading its params there."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, str(PROJECT / "stages" / script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and run.stderr.strip().splitlines()[-1] == errors[0], run.stderr
    return errors[0]


def _evil_pickle(marker: Path) -> bytes:
    # Unpickling it would run `touch marker` (os.system), as a hostile volume would.
    return (b"cposix\nsystem\n(X" + len(f"touch {marker}").to_bytes(4, "little")
            + f"touch {marker}".encode() + b"tR.")


@pytest.mark.parametrize("damage", ["runs-code", "bare-ndarray", "claims-more-than-its-bytes",
                                    "metadata-integer"])
def test_hostile_kneemri_files_stop_prepare_in_one_line(tmp_path: Path, damage: str) -> None:
    from test_kneemri import TINY

    from mrnet.kneemri.synthetic import generate_kneemri

    root = tmp_path / "KneeMRI"
    generate_kneemri(root, TINY)
    text = (PROJECT / "params.yaml").read_text()
    for key, value in (("enabled", "true"), ("root", "KneeMRI"), ("out", "out")):
        text = edited(text, "kneemri", key, value)
    (tmp_path / "params.yaml").write_text(text)
    marker = tmp_path / "pwned"
    victim = sorted(root.glob("vol*/*.pck"))[1]
    if damage == "runs-code":
        victim.write_bytes(_evil_pickle(marker))
        named = f"{victim.relative_to(tmp_path)}: refused to unpickle posix.system"
    elif damage == "bare-ndarray":
        victim.write_bytes(BARE_NDARRAY)
        named = f"{victim.relative_to(tmp_path)}: refused a bare numpy.ndarray construction"
    elif damage == "claims-more-than-its-bytes":
        victim.write_bytes(_frombuffer_pickle(16, (1000, 1024, 1024)))
        named = (f"{victim.relative_to(tmp_path)}: refused an array of shape (1000, 1024, 1024) "
                 "(uint8) from 16 bytes of data")
    else:
        meta = root / "metadata.csv"
        lines = meta.read_text().splitlines()
        header = lines[0].split(",")
        row = lines[2].split(",")
        row[header.index("roiX")] = "--1"
        lines[2] = ",".join(row)
        meta.write_text("\n".join(lines) + "\n")
        named = f"{meta.relative_to(tmp_path)}:3: roiX must be an integer"
    before = snapshot(tmp_path)
    error = one_error_line(run_stage("kneemri/prepare.py", tmp_path))
    assert error.startswith("error: ") and named in error, error
    assert not marker.exists()  # nothing ran
    assert snapshot(tmp_path) == before  # nothing written: no out/, no temp folder


@pytest.mark.parametrize("kind", ["30000x30000", "ztxt"])
def test_mura_image_bombs_stop_validate_in_one_line(tmp_path: Path, kind: str) -> None:
    from test_mura_data import write_dataset

    root = tmp_path / "MURA-v1.1"
    write_dataset(root)
    (tmp_path / "mura").mkdir()
    (tmp_path / "mura" / "params.yaml").write_text(edited(
        (PROJECT / "mura" / "params.yaml").read_text(), "data", "root", "MURA-v1.1"))
    victim = root / "valid" / "XR_FINGER" / "patient11186" / "study1_negative" / "image1.png"
    victim.write_bytes(_ztxt_bomb(tmp_path) if kind == "ztxt" else
                       _png_header_claiming(30000, 30000))
    before = snapshot(tmp_path)
    error = one_error_line(run_stage("mura/validate.py", tmp_path))
    assert error.startswith(f"error: {victim}: ") and (
        "decompression bomb" in error or "Too Large" in error or "too large" in error), error
    assert snapshot(tmp_path) == before  # no mura/metrics/dataset.json


def _cut_header(folder: Path) -> Path:
    victim = slices_of(folder, 5)[1]
    victim.write_bytes(victim.read_bytes()[:300])
    return victim


def _missing_slice(folder: Path) -> Path:
    files = slices_of(folder, 3)
    files[1].unlink()
    return files[0]


def _set(number: int, index: int, **tags: object) -> Callable[[Path], Path]:
    def damage(folder: Path) -> Path:
        victim = slices_of(folder, number)[index]
        set_tags(victim, **tags)
        return victim
    return damage


@pytest.mark.parametrize("damage, says", [
    (_cut_header, "(cut short?); re-export the exam"),
    (_missing_slice, "1 slice(s) missing?"),
    (_set(5, 2, ImagePositionPatient=["nan", "nan", "nan"]), "is not finite"),
    (_set(7, 1, ImagePositionPatient=[0.0, 0.0, -15.5]), "a spacing of"),
    (_set(5, 2, PixelSpacing=[0.0, 0.0]), "PixelSpacing [0.0, 0.0] (needs two positive"),
    (_set(5, 2, PixelSpacing=[-2.0, -2.0]), "PixelSpacing [-2.0, -2.0] (needs two positive"),
    (_set(7, 0, Rows=65535, Columns=65535), "is 65535 x 65535, 3 others 32 x 32"),
    (_set(3, 3, RescaleIntercept="inf"), "RescaleIntercept inf"),
    (_set(3, 3, RescaleSlope="0"), "RescaleSlope 0"),
], ids=["cut-header", "missing-slice", "nan-position", "irregular-spacing", "zero-spacing",
        "negative-spacing", "huge-matrix", "inf-rescale", "zero-slope"])
def test_dicom_rows_through_import_dicom(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         damage: Callable[[Path], Path], says: str) -> None:
    from mrnet.cli import cmd_import_dicom

    folder = fresh_exam(tmp_path)
    out = tmp_path / "out"
    cmd_import_dicom([str(folder), str(out), "--size", "32"])  # an earlier import
    capsys.readouterr()
    before = snapshot(out)
    victim = damage(folder)
    with pytest.raises(SystemExit) as exc:
        cmd_import_dicom([str(folder), str(out), "--size", "32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and victim.name in err[0], err
    assert says in err[0], err
    assert snapshot(out) == before  # the earlier import whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam", "out"]  # no temp folder


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_import_dicom_files_get_the_umask_mode(scanner_exam: Path, tmp_path: Path,
                                               umask: int, capsys: pytest.CaptureFixture) -> None:
    from mrnet.cli import cmd_import_dicom

    old = os.umask(umask)
    try:
        cmd_import_dicom([str(scanner_exam), str(tmp_path / "out"), "--size", "32"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert modes == dict.fromkeys(["axial.npy", "coronal.npy", "sagittal.npy", "dicom.json"],
                                  0o666 & ~umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
