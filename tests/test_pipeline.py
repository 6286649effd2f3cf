"""End to end through the real `dvc` CLI in a temporary git repository, at tiny scale."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import PROJECT

from mrnet import PLANES, TASKS
from mrnet.config import SynthesizeConfig
from mrnet.data.synthetic import generate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY_PARAMS = {
    "synthesize": {"n_train": 16, "n_valid": 10, "image_size": 48, "slices_min": 3,
                   "slices_max": 5},
    "prepare": {"image_size": 64},
    "train": {"epochs": 1, "exams_per_batch": 4},
    "evaluate": {"bootstrap": 20},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DVCLIVE_TEST", None)  # stages run as they would for a user
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["TQDM_DISABLE"] = "1"
    return env


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def set_params(repo: Path, updates: dict) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def restore(repo: Path) -> None:
    """Back to the committed baseline: params, lock file, git-tracked outputs (metrics, plots,
    learning curves) and the DVC-cached outputs they describe."""
    run(repo, "git", "reset", "-q", "--hard")
    run(repo, "dvc", "checkout", "-q", "--force")


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git + DVC repository holding the project, reproduced once at tiny scale."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("mrnet", "stages"):
        shutil.copytree(PROJECT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "plots/templates/models.json"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / name, repo / name)
    set_params(repo, TINY_PARAMS)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    proc = run(repo, "dvc", "repro")
    assert {"synthesize", "validate", "evaluate"} <= ran_stages(proc.stdout)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    return repo


def test_repro_produces_models_metrics_and_plots(repo: Path) -> None:
    dataset = json.loads((repo / "reports" / "dataset.json").read_text())
    assert dataset["train"]["exams"] == 16 and dataset["valid"]["exams"] == 10
    for task in TASKS:
        for plane in PLANES:
            assert (repo / "models" / f"{task}-{plane}.pt").is_file()
            assert (repo / "dvclive" / f"{task}-{plane}" / "metrics.json").is_file()
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    models = {*PLANES, "ensemble", "multitask"}
    for task in TASKS:
        assert set(report[task]) == models
        assert set(pd.read_csv(repo / "plots" / "roc" / f"{task}.csv")["model"]) <= models
        png = repo / "plots" / f"roc-{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The viewer renders exactly the exams of the error report.
    listed = {row["case_id"] for rows in json.loads(
        (repo / "reports" / "errors.json").read_text()).values() for row in rows}
    assert {p.stem for p in (repo / "plots" / "viewer").glob("*.html")} == listed
    # The learning curves of the nine CNNs and the multitask network.
    curves = pd.read_csv(repo / "plots" / "learning" / "val_auc.csv", dtype={"model": str})
    assert set(curves["model"]) == {f"{t}-{p}" for t in TASKS for p in PLANES} | {"multitask"}

    # `dvc metrics show` is the headline only, a row per task and one for the means, and it
    # fits a 200-column terminal.
    shown = run(repo, "dvc", "metrics", "show").stdout
    lines = shown.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == [f"metrics/{t}.json" for t in (*TASKS, "mean")]
    assert max(len(ln) for ln in lines) <= 200, shown
    for key in ("auc", "multitask_auc", "sensitivity_at_operating_point"):
        assert key in lines[0].split()
    assert "dataset" not in shown and "dvclive" not in shown
    # The full report is a path away.
    assert "acl.ensemble.brier" in run(repo, "dvc", "metrics", "show",
                                       "reports/metrics.json").stdout
    html = repo / "report"
    run(repo, "dvc", "plots", "show", "-o", str(html))
    assert (html / "index.html").is_file()
    assert run(repo, "dvc", "status").stdout.strip().startswith("Data and pipelines are up to date")


def test_evaluate_param_reruns_only_evaluate(repo: Path) -> None:
    set_params(repo, {"evaluate": {"bootstrap": 30}})
    status = run(repo, "dvc", "status").stdout
    assert "evaluate:" in status and "train@" not in status and "ensemble@" not in status
    # kneemri_evaluate bootstraps with the same evaluate keys (a note while it is off)
    assert ran_stages(run(repo, "dvc", "repro").stdout) == {"evaluate", "kneemri_evaluate"}
    restore(repo)


def test_task_param_reruns_only_that_task(repo: Path) -> None:
    # a key new to the task section is added with Hydra's "+" prefix
    proc = run(repo, "dvc", "exp", "run", "-S", "+task.acl.lr=0.0003")
    ran = ran_stages(proc.stdout)
    assert {f"train@acl-{p}" for p in PLANES} <= ran
    assert not any(s.startswith("train@abnormal") or s.startswith("train@meniscus") for s in ran)
    assert "evaluate" in ran
    params_diff = run(repo, "dvc", "params", "diff").stdout
    assert "task.acl.lr" in params_diff
    metrics_diff = run(repo, "dvc", "metrics", "diff").stdout
    assert "acl" in metrics_diff
    # The docs' compact comparison fits a 160-column terminal and shows every task's AUC.
    command = next(line.split("#")[0].strip() for line in
                   (PROJECT / "docs" / "pipeline.md").read_text().splitlines()
                   if line.startswith("dvc exp show --only-changed"))
    proc = subprocess.run(shlex.split(command) + ["--no-pager"], cwd=repo, capture_output=True,
                          text=True, env={**_env(), "COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.splitlines()
    assert max(len(line) for line in table) <= 160, proc.stdout
    header = " ".join(table[:4])
    for task in (*TASKS, "mean"):
        assert f"metrics/{task}.json:auc " in header, proc.stdout
    assert "task.acl.lr" in header and "_ci_" not in header and "dvclive/" not in header
    assert "…" not in proc.stdout, proc.stdout  # nothing had to be cut to fit
    restore(repo)


def test_external_data_root_is_read_never_written(repo: Path, tmp_path: Path) -> None:
    external = tmp_path / "MRNet-v1.0"
    generate(external, SynthesizeConfig(seed=7, n_train=12, n_valid=8, image_size=48,
                                        slices_min=3, slices_max=4))
    before = digest_tree(external)
    # The stages that read the dataset (later ones read only the prepared cache).
    set_params(repo, {"data": {"root": str(external)}})
    ran = ran_stages(run(repo, "dvc", "repro", "synthesize", "prepare").stdout)
    assert {"synthesize", "validate", "prepare@axial"} <= ran
    assert digest_tree(external) == before
    dataset = json.loads((repo / "reports" / "dataset.json").read_text())
    assert dataset["train"]["exams"] == 12 and dataset["valid"]["exams"] == 8
    # nothing synthetic was generated for this run
    assert not list((repo / "data" / "synthetic").rglob("*.npy"))
    restore(repo)


def test_multitask_off_removes_its_cost_and_entries(repo: Path) -> None:
    set_params(repo, {"multitask": {"enabled": False}})
    ran = ran_stages(run(repo, "dvc", "repro").stdout)
    assert ran == {"train_multitask", "evaluate"}
    report = json.loads((repo / "reports" / "metrics.json").read_text())
    assert "multitask" not in report["mean_auc"]
    assert all("multitask" not in report[t] for t in TASKS)
    assert "multitask_auc" not in json.loads((repo / "metrics" / "acl.json").read_text())
    for task in TASKS:
        assert "multitask" not in set(pd.read_csv(repo / "plots" / "roc" / f"{task}.csv")["model"])
    assert not (repo / "models" / "multitask" / "model.pt").exists()
    # Every declared plot still renders: nothing names the multitask network's files.
    proc = run(repo, "dvc", "plots", "show", "--json")
    shown = json.loads(proc.stdout)
    assert not shown.get("errors"), shown.get("errors")
    assert any(k.startswith("plots/roc/") for k in shown["data"])
    restore(repo)
