"""The MURA pipeline end to end through the real `dvc` CLI, in a temporary git repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e import TrainedRepo, ran_stages, run, set_params

from mrnet.mura import STUDY_TYPES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_repro_ran_the_mura_pipeline_alone(trained_repo: TrainedRepo) -> None:
    # `dvc repro mura/dvc.yaml`, run first on the shared repository's fresh copy
    assert trained_repo.mura_ran == {f"mura/dvc.yaml:{s}" for s in (
        "synthesize", "validate", "prepare", "train", "extract", "evaluate", "viewer")}
    # the MRNet pipeline at the root was not run
    assert trained_repo.root_after_mura == {"dvc.lock": False, "models": False}


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
    set_params(repo, {"evaluate": {"threshold": 0.4}}, "mura/params.yaml")
    ran = ran_stages(run(repo, "dvc", "repro", "mura/dvc.yaml").stdout)
    assert ran == {"mura/dvc.yaml:evaluate", "mura/dvc.yaml:viewer"}
    assert json.loads((repo / "mura/metrics/metrics.json").read_text())["threshold"] == 0.4
