"""The installed `mrnet` command, run from outside the project; the paper's recipe."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from e2e import init_repo, run
from helpers import PROJECT, build_tiny_pipeline
from test_dicom import write_exam

from mrnet import PLANES, TASKS
from mrnet.cli import apply_overrides, load_recipe, project_root, recipe_command
from mrnet.config import Params, params_from_dict
from mrnet.core.errors import ParamsError
from mrnet.data.dicom import import_exam
from mrnet.data.reader import load_series
from mrnet.inference.predict import load_predictor, predict_volumes

# `pip install -e .` (requirements.txt) puts the console script next to the interpreter.
MRNET = Path(sys.executable).parent / "mrnet"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Params:
    return build_tiny_pipeline(tmp_path_factory.getbasetemp() / "tiny-pipeline")


@pytest.fixture(scope="module")
def dicom_exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scanner") / "knee-0007"
    write_exam(folder, seed=7)
    return folder


def run_mrnet(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The console script in a clean environment: no PYTHONPATH, so only the installed
    package can be imported."""
    assert MRNET.is_file(), f"{MRNET} missing: install the project with pip install -e ."
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(MRNET), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_installed_command_lists_its_commands(tmp_path: Path) -> None:
    proc = run_mrnet(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("predict", "exam", "import-dicom", "weights", "recipe", "sweep"):
        assert f"mrnet {command}" in proc.stdout
    proc = run_mrnet(tmp_path, "train-everything")
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == ["error: unknown command 'train-everything'; commands: "
                                        "predict, exam, import-dicom, weights, recipe, "
                                        "sweep (mrnet --help)"]


def test_predict_from_another_directory(pipeline: Params, tmp_path: Path) -> None:
    root = Path(pipeline.data.root)
    ids = sorted(p.stem for p in (root / "valid" / "axial").glob("*.npy"))[:3]
    lines = [os.path.relpath(root / "valid" / p / f"{c}.npy", tmp_path)
             for c in ids for p in ("sagittal", "coronal", "axial")]
    (tmp_path / "in.csv").write_text("".join(line + "\n" for line in lines))
    models = str(Path(pipeline.train.out).resolve())
    proc = run_mrnet(tmp_path, "predict", "--allow-synthetic", "in.csv", "out.csv",
                     "--models", models)
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "out.csv").open(newline="") as fh:
        got = np.array([[float(v) for v in row] for row in csv.reader(fh)])
    predictor = load_predictor({t: Path(models) for t in TASKS}, Path(models),
                               allow_synthetic=True)
    volumes = [{p: load_series(root / "valid" / p / f"{c}.npy") for p in PLANES} for c in ids]
    expected = predict_volumes(predictor, volumes, ids).table()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_predict_a_dicom_folder_directly(pipeline: Params, dicom_exam: Path,
                                         tmp_path: Path) -> None:
    models = str(Path(pipeline.train.out).resolve())
    proc = run_mrnet(tmp_path, "predict", "--allow-synthetic", "--exam", str(dicom_exam),
                     "--models", models,
                     "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["case_id"] == "knee-0007"
    # The same as importing first and predicting the three .npy series.
    imported = tmp_path / "imported"
    import_exam(dicom_exam, imported)
    predictor = load_predictor({t: Path(models) for t in TASKS}, Path(models),
                               allow_synthetic=True)
    volumes = {p: load_series(imported / f"{p}.npy") for p in PLANES}
    expected = predict_volumes(predictor, [volumes], ["knee-0007"])
    for task in TASKS:
        assert report["tasks"][task]["prob"] == pytest.approx(expected.probs[task][0], abs=1e-6)
    # `mrnet exam` is the same report.
    proc = run_mrnet(tmp_path, "exam", str(dicom_exam), "--allow-synthetic", "--models",
                     models, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tasks"] == report["tasks"]


def test_import_dicom_command(dicom_exam: Path, tmp_path: Path) -> None:
    proc = run_mrnet(tmp_path, "import-dicom", str(dicom_exam), "out", "--series", "SAG PD",
                     "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert "sagittal  series 4 'SAG PD': 9 slices" in proc.stdout
    assert "ignored   series 1 '3-plane loc': localizer" in proc.stdout
    assert load_series(tmp_path / "out" / "coronal.npy").shape == (6, 64, 64)
    proc = run_mrnet(tmp_path, "import-dicom", str(tmp_path / "out"), "again")
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [f"error: {tmp_path / 'out'}: no DICOM images found "
                                        "(4 other files)"]


def test_without_params_the_installed_project_is_used(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert project_root(tmp_path) == PROJECT  # the editable install's checkout
    copy = tmp_path / "checkout"
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, copy / name) if copy.exists() else (
            copy.mkdir(), shutil.copy(PROJECT / name, copy / name))
    (copy / "stages").mkdir()
    (copy / "data" / "deep").mkdir(parents=True)
    assert project_root(copy / "data" / "deep") == copy  # a project above the folder wins
    # From elsewhere, `mrnet exam` reads the project's params and so names its models folder.
    exam = tmp_path / "exam"
    exam.mkdir()
    for plane in PLANES:
        np.save(exam / f"{plane}.npy", np.zeros((3, 64, 64), np.uint8))
    models = PROJECT / "models"
    proc = run_mrnet(tmp_path, "exam", str(exam), "--json", "-")
    assert str(models) in proc.stderr, proc.stderr


# ---------------------------------------------------------------- the paper's recipe


def test_paper_recipe_resolves_to_the_papers_values(tmp_path: Path) -> None:
    recipe = load_recipe("paper", PROJECT)
    assert (recipe["name"], recipe["version"]) == ("paper", 1)
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params = params_from_dict(apply_overrides(raw, {**recipe["params"],
                                                    "data.root": str(tmp_path)}))
    assert params.data.root == str(tmp_path) and params.data.tune_fraction == 0.0
    assert params.prepare.image_size == 256
    assert (params.model.backbone, params.model.pretrained, params.model.slice_pool,
            params.model.spatial_pool) == ("alexnet", True, "max", "avg")
    for cfg in [params.train_for(t) for t in TASKS]:
        # Adam lr 1e-5, weight decay 0.01, batch of one exam, 50 epochs run in full,
        # ReduceLROnPlateau(factor 0.3, patience 5), augmentation of the authors' code.
        assert (cfg.lr, cfg.weight_decay, cfg.exams_per_batch, cfg.epochs) == (1e-5, 0.01, 1, 50)
        assert (cfg.lr_factor, cfg.lr_patience) == (0.3, 5) and cfg.patience >= cfg.epochs
        assert (cfg.augment.rotation, cfg.augment.translation, cfg.augment.flip) == \
            (25.0, 25.0, 0.5)
    # The command passes exactly these values through dvc's -S.
    cmd = recipe_command(recipe, tmp_path, queue=True)
    assert cmd[:4] == ["dvc", "exp", "run", "--queue"]
    pairs = dict(kv.split("=", 1) for kv in cmd[5::2])
    assert cmd[4::2] == ["-S"] * len(pairs)
    assert pairs["data.root"] == str(tmp_path.resolve())
    assert {k: yaml.safe_load(v) for k, v in pairs.items() if k != "data.root"} == \
        recipe["params"]


def test_recipe_numbers_are_read_as_dvc_writes_them(tmp_path: Path) -> None:
    # A recipe saved by hand or by a tool that writes 1e-05 must give a number, as DVC reads
    # it, not the text YAML 1.1 makes of it.
    recipe = tmp_path / "fine.yaml"
    recipe.write_text("name: fine\nversion: 1\nparams:\n  train.lr: 1e-05\n")
    got = load_recipe(str(recipe), PROJECT)["params"]["train.lr"]
    assert got == 1e-05 and isinstance(got, float)


def test_predict_help_names_the_command_it_was_called_as() -> None:
    proc = run_mrnet(PROJECT, "predict", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mrnet predict ")
    proc = subprocess.run([sys.executable, "-m", "mrnet.inference.predict", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("usage: python -m mrnet.inference.predict ")


def test_recipe_key_missing_from_params_is_an_error() -> None:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    with pytest.raises(ParamsError, match=r"recipe key train\.learning_rate is not in params"):
        apply_overrides(raw, {"train.learning_rate": 1e-5})


def test_recipe_command_prints_and_checks(tmp_path: Path) -> None:
    data = tmp_path / "MRNet-v1.0"
    data.mkdir()
    proc = run_mrnet(PROJECT / "tests", "recipe", "paper", "--data-root", str(data), "--print")
    assert proc.returncode == 0, proc.stderr
    assert f"recipe paper v1 in {PROJECT}:" in proc.stdout
    assert f"dvc exp run -S data.root={data} -S prepare.image_size=256" in proc.stdout
    proc = run_mrnet(PROJECT, "recipe", "paper", "--data-root", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [f"error: {tmp_path / 'nope'}: dataset folder not found "
                                        "(--data-root takes the folder holding train/, valid/ "
                                        "and the label CSVs)"]


@pytest.mark.e2e
@pytest.mark.slow
def test_recipe_params_as_dvc_writes_them_load(tmp_path: Path) -> None:
    """dvc exp run -S writes 1e-05 for the learning rate; the stages must read a number."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(PROJECT / "params.yaml", repo / "params.yaml")
    check = ("from mrnet.config import load_params; p = load_params(); "
             "assert p.train.lr == 1e-5 and p.model.pretrained, p.train")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": {
        "cmd": f"python -c '{check}'", "params": ["data", "prepare", "model", "train"]}}}))
    init_repo(repo)
    # the check stage imports the project from here
    run(repo, *recipe_command(load_recipe("paper", PROJECT), tmp_path),
        extra_env={"PYTHONPATH": str(PROJECT)})
    assert "lr: 1e-05" in (repo / "params.yaml").read_text()  # YAML 1.1 would read text
