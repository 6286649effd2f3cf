"""The MURA pipeline end to end through the real `dvc` CLI, in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mrnet.mura import STUDY_TYPES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[1]
TINY = {
    "synthesize": {"n_train": 14, "n_valid": 10, "image_size": 40, "views_max": 3},
    "train": {"epochs": 1, "precision": "fp32"},
    "evaluate": {"bootstrap": 20},
    "viewer": {"n_studies": 2},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DVCLIVE_TEST", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["TQDM_DISABLE"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project (both pipelines) in a fresh git + DVC repository, MURA reproduced tiny."""
    repo = tmp_path_factory.mktemp("mura_repo")
    for name in ("mrnet", "stages", "mura"):
        shutil.copytree(PROJECT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__", "data", "models", "dvc.lock"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)
    params = repo / "mura" / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    for section, values in TINY.items():
        raw[section].update(values)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    proc = run(repo, "dvc", "repro", "mura/dvc.yaml")
    assert ran_stages(proc.stdout) == {f"mura/dvc.yaml:{s}" for s in (
        "synthesize", "validate", "prepare", "train", "extract", "evaluate", "viewer")}
    return repo


def test_repro_writes_study_metrics_per_type_kappa_and_rocs(repo: Path) -> None:
    dataset = json.loads((repo / "mura/metrics/dataset.json").read_text())
    assert dataset["train"]["studies"] == 14 and dataset["valid"]["studies"] == 10
    metrics = json.loads((repo / "mura/metrics/metrics.json").read_text())
    assert metrics["study"]["n_studies"] == 10 and metrics["threshold"] == 0.5
    assert set(metrics["study"]) >= {"auc", "auc_ci_low", "auc_ci_high", "kappa",
                                     "kappa_ci_low", "kappa_ci_high", "accuracy",
                                     "sensitivity", "specificity"}
    assert set(metrics["per_type"]) == set(STUDY_TYPES)  # n >= 7: every type present
    assert sum(m["n_studies"] for m in metrics["per_type"].values()) == 10
    assert all("kappa" in m for m in metrics["per_type"].values())
    table = (repo / "mura/metrics/per_type.csv").read_text().splitlines()
    assert table[0].startswith("study_type,") and table[-1].startswith("all,")
    assert (repo / "mura/plots/roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (repo / "mura/plots/roc/all.csv").read_text().startswith("fpr,tpr\n0,0\n")
    assert len(list((repo / "mura/plots/viewer").glob("*.html"))) == 2
    assert (repo / "mura/models/model.pt").is_file()
    # the MRNet pipeline at the root was not run
    assert not (repo / "dvc.lock").exists() and not (repo / "models").exists()


def test_up_to_date_from_root_and_from_mura_and_metrics_shown(repo: Path) -> None:
    assert "up to date" in run(repo, "dvc", "status", "mura/dvc.yaml").stdout
    assert "didn't change" in run(repo / "mura", "dvc", "repro").stdout
    shown = run(repo / "mura", "dvc", "metrics", "show").stdout
    assert "metrics/headline.json" in shown and "kappa" in shown
    assert "per_type" not in shown and max(len(ln) for ln in shown.splitlines()) <= 200
    headline = json.loads((repo / "mura/metrics/headline.json").read_text())
    study = json.loads((repo / "mura/metrics/metrics.json").read_text())["study"]
    assert headline["auc"] == study["auc"] and headline["kappa"] == study["kappa"]
    assert headline["sensitivity_at_operating_point"] == study["sensitivity"]
    full = run(repo / "mura", "dvc", "metrics", "show", "metrics/metrics.json").stdout
    assert "per_type.XR_WRIST.kappa" in full
    run(repo / "mura", "dvc", "plots", "show", "-o", str(repo / "report"))
    assert (repo / "report" / "index.html").is_file()


def test_evaluate_param_reruns_only_evaluate(repo: Path) -> None:
    params = repo / "mura" / "params.yaml"
    before = params.read_text()
    raw = yaml.safe_load(before)
    raw["evaluate"]["threshold"] = 0.4
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        ran = ran_stages(run(repo, "dvc", "repro", "mura/dvc.yaml").stdout)
        assert ran == {"mura/dvc.yaml:evaluate", "mura/dvc.yaml:viewer"}
        assert json.loads((repo / "mura/metrics/metrics.json").read_text())["threshold"] == 0.4
    finally:
        params.write_text(before)
