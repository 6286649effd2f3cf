"""End to end through the real `dvc` CLI in a temporary git repository, at tiny scale."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
from e2e import TrainedRepo, digest_tree, ran_stages, run, set_params
from helpers import PROJECT

from mrnet import PLANES, TASKS
from mrnet.config import SynthesizeConfig
from mrnet.data.synthetic import generate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_repro_built_the_pipeline(trained_repo: TrainedRepo) -> None:
    assert {"synthesize", "validate", "evaluate"} <= trained_repo.ran


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
    # (and MURA's headline row: the README's command runs both pipelines of the repository)
    assert [ln.split()[0] for ln in lines[1:]] == [
        *(f"metrics/{t}.json" for t in (*TASKS, "mean")), "mura/metrics/headline.json"]
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
    stages = {line[:-1] for line in status.splitlines() if line and not line[0].isspace()}
    assert "evaluate" in stages and not {s for s in stages if s.startswith(("train", "ensemble"))}
    # kneemri_evaluate bootstraps with the same evaluate keys (a note while it is off)
    assert ran_stages(run(repo, "dvc", "repro").stdout) == {"evaluate", "kneemri_evaluate"}


def test_task_param_reruns_only_that_task(repo: Path) -> None:
    # a key new to the task section is added with Hydra's "+" prefix
    proc = run(repo, "dvc", "exp", "run", "-S", "+task.acl.lr=0.0003")
    ran = ran_stages(proc.stdout)
    assert {f"train@acl-{p}" for p in PLANES} <= ran
    assert not any(s.startswith(("train@abnormal", "train@meniscus")) for s in ran)
    assert "evaluate" in ran
    params_diff = run(repo, "dvc", "params", "diff").stdout
    assert "task.acl.lr" in params_diff
    metrics_diff = run(repo, "dvc", "metrics", "diff").stdout
    assert "acl" in metrics_diff
    # The docs' compact comparison fits a 160-column terminal and shows every task's AUC.
    command = next(line.split("#")[0].strip() for line in
                   (PROJECT / "docs" / "pipeline.md").read_text().splitlines()
                   if line.startswith("dvc exp show --only-changed"))
    proc = run(repo, *shlex.split(command), "--no-pager", extra_env={"COLUMNS": "160"})
    table = proc.stdout.splitlines()
    assert max(len(line) for line in table) <= 160, proc.stdout
    header = " ".join(table[:4])
    for task in (*TASKS, "mean"):
        assert f"metrics/{task}.json:auc " in header, proc.stdout
    assert "task.acl.lr" in header and "_ci_" not in header and "dvclive/" not in header
    assert "…" not in proc.stdout, proc.stdout  # nothing had to be cut to fit


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


def test_first_contact_is_clean(trained_repo: TrainedRepo, repo: Path) -> None:
    """After the README's command, the first things a DVC user types say nothing is wrong."""
    assert not {s for s in trained_repo.ran if s.startswith("mura/")}  # MURA was up to date
    status = run(repo, "dvc", "status")
    assert status.stdout.strip() == "Data and pipelines are up to date.", status.stdout
    for where in (repo, repo / "mura"):
        metrics = run(where, "dvc", "metrics", "show")
        assert "failed" not in (metrics.stdout + metrics.stderr).lower(), metrics
        plots = run(where, "dvc", "plots", "show", "-o", str(where / "first-contact"))
        assert plots.stderr == "", plots.stderr  # no warning about missing plot files
        assert (where / "first-contact" / "index.html").is_file()
