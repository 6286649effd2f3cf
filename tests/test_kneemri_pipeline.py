"""KneeMRI external validation end to end through the real `dvc` CLI, at tiny scale.

The repository reproduces ``kneemri_evaluate`` and what it needs (the ACL models, their
probabilities and ensemble), not the other six CNNs, to keep the test short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT

from mrnet.config import KneemriSyntheticConfig
from mrnet.kneemri.synthetic import generate_kneemri

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TARGET = "kneemri_evaluate"
KNEEMRI_STAGES = {"kneemri_synthesize", "kneemri_prepare", "kneemri_zero_shot",
                  "kneemri_retrain", "kneemri_evaluate"}
TASKS = ("injury", "complete")
TINY_PARAMS = {
    "synthesize": {"n_train": 16, "n_valid": 10, "image_size": 48, "slices_min": 3,
                   "slices_max": 5},
    "prepare": {"image_size": 64},
    "train": {"epochs": 1, "exams_per_batch": 4},
    "evaluate": {"bootstrap": 20},
    "multitask": {"enabled": False},
    "kneemri": {"train": {"epochs": 1},
                "synthetic": {"out": "data/synthetic-kneemri", "seed": 0, "exams_per_folder": 3,
                              "image_size": 48, "slices_min": 4, "slices_max": 6}},
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DVCLIVE_TEST", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["TQDM_DISABLE"] = "1"
    return env


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def set_params(repo: Path, updates: dict) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def ran_stages(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project in a fresh git + DVC repository, reproduced with KneeMRI off."""
    repo = tmp_path_factory.mktemp("repo")
    for name in ("mrnet", "stages"):
        shutil.copytree(PROJECT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "plots/templates/models.json"):
        if (PROJECT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PROJECT / name, repo / name)
    set_params(repo, TINY_PARAMS)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")
    ran = ran_stages(run(repo, "dvc", "repro", TARGET).stdout)
    assert KNEEMRI_STAGES <= ran and "train@acl-sagittal" in ran
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    return repo


def test_off_by_default_writes_only_notes(repo: Path) -> None:
    assert json.loads((repo / "metrics" / "kneemri.json").read_text()) == {"enabled": False}
    for folder in ("data/synthetic-kneemri", "data/kneemri/prepared", "data/kneemri/zero_shot",
                   "data/kneemri/retrained", "plots/kneemri"):
        assert [p.name for p in (repo / folder).iterdir()] == ["README.txt"], folder
    assert "kneemri.enabled is false" in (repo / "plots/kneemri/README.txt").read_text()


def test_phantoms_zero_shot_and_retrained_through_dvc_repro(repo: Path, tmp_path: Path) -> None:
    set_params(repo, {"kneemri": {"enabled": True}})
    status = run(repo, "dvc", "status", "--with-deps", TARGET).stdout
    assert "kneemri_synthesize:" in status and "train@" not in status
    ran = ran_stages(run(repo, "dvc", "repro", TARGET).stdout)
    assert ran == KNEEMRI_STAGES  # nothing of the MRNet pipeline reruns

    metrics = json.loads((repo / "metrics" / "kneemri.json").read_text())
    assert metrics["enabled"] is True and metrics["crop"] == "roi"
    for model in ("zero_shot", "zero_shot_ensemble", "retrained"):
        for task, n_pos in (("injury", 4), ("complete", 2)):
            r = metrics[model][task]
            assert r["n"] == 6 and r["n_pos"] == n_pos, (model, task, r)
            assert 0.0 <= r["auc_ci_low"] <= r["auc"] <= r["auc_ci_high"] <= 1.0, (model, task)
    for model in ("zero_shot", "retrained"):
        for task in TASKS:
            lines = (repo / "plots" / "kneemri" / model / f"{task}.csv").read_text().split()
            assert lines[0] == "fpr,tpr" and lines[1] == "0,0" and lines[-1] == "1,1"
    for task in TASKS:
        png = repo / "plots" / "kneemri" / f"roc-{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ckpt = repo / "data" / "kneemri" / "retrained" / f"{task}.pt"
        assert ckpt.is_file()
    # the test exams scored zero-shot are the test folders' series, labelled from aclDiagnosis
    table = (repo / "data/kneemri/zero_shot/complete-sagittal.csv").read_text().split()
    assert table[0] == "case_id,split,label,prob" and len(table) == 7
    assert all(line.split(",")[1] == "test" for line in table[1:])

    # a user's KneeMRI folder is read, never written, and no phantom is mixed in; crop full
    external = tmp_path / "KneeMRI"
    generate_kneemri(external, KneemriSyntheticConfig(seed=5, exams_per_folder=4,
                                                      image_size=40, slices_min=3,
                                                      slices_max=5))
    before = digest_tree(external)
    set_params(repo, {"kneemri": {"root": str(external), "crop": "full"}})
    ran = ran_stages(run(repo, "dvc", "repro", TARGET).stdout)
    # the phantom stage no longer feeds kneemri_prepare: the dataset is the user's folder
    assert ran == KNEEMRI_STAGES - {"kneemri_synthesize"}
    assert ran_stages(run(repo, "dvc", "repro", "kneemri_synthesize").stdout) == {
        "kneemri_synthesize"}
    assert digest_tree(external) == before
    assert [p.name for p in (repo / "data" / "synthetic-kneemri").iterdir()] == ["README.txt"]
    metrics = json.loads((repo / "metrics" / "kneemri.json").read_text())
    assert metrics["crop"] == "full"
    assert metrics["retrained"]["injury"]["n"] == 8 and metrics["zero_shot"]["complete"]["n"] == 8
    status = run(repo, "dvc", "status", "--with-deps", TARGET).stdout.strip()
    assert status.startswith("Data and pipelines are up to date")
