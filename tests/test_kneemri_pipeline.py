"""KneeMRI external validation end to end through the real `dvc` CLI, at tiny scale.

The tests use the shared trained repository (``conftest.py``): KneeMRI starts off, as by
default, and turning it on reruns the KneeMRI stages only, on the ACL models already there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import TrainedRepo, digest_tree, ran_stages, run, set_params

from mrnet.config import KneemriSyntheticConfig
from mrnet.kneemri.synthetic import generate_kneemri

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TARGET = "kneemri_evaluate"
KNEEMRI_STAGES = {"kneemri_synthesize", "kneemri_prepare", "kneemri_zero_shot",
                  "kneemri_retrain", "kneemri_evaluate"}
TASKS = ("injury", "complete")


def test_repro_built_the_kneemri_stages_and_acl_models(trained_repo: TrainedRepo) -> None:
    assert KNEEMRI_STAGES <= trained_repo.ran and "train@acl-sagittal" in trained_repo.ran


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
