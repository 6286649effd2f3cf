"""The team workflow of docs/team.md, end to end: a DVC remote in a shared folder, a bare git
remote, one clone that pushes the trained models and another that pulls and predicts without
retraining; models fetched with `dvc get` / `dvc artifacts get`; an experiment pushed and
pulled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e import TrainedRepo, ran_stages, run

from mrnet import PLANES, TASKS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def exam_list(repo: Path, out: Path, cases: list[str]) -> Path:
    """An MRNet-format input list (three lines per case) of valid exams of ``repo``."""
    root = repo / "data" / "synthetic" / "MRNet-v1.0" / "valid"
    out.write_text("".join(f"{root / plane / case}.npy\n" for case in cases
                           for plane in ("sagittal", "coronal", "axial")))
    return out


@pytest.fixture(scope="module")
def team(trained_repo: TrainedRepo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Machine A (a clone of the trained repository, with its cache) pushes to a bare git
    remote and a folder remote; machine B clones the git remote and pulls."""
    base = tmp_path_factory.mktemp("team")
    origin, store = base / "origin.git", base / "dvc-store"
    run(base, "git", "init", "-q", "--bare", "--initial-branch=main", str(origin))
    a = base / "a"
    run(base, "git", "clone", "-q", str(trained_repo.path), str(a))
    shutil.copytree(trained_repo.path / ".dvc" / "cache", a / ".dvc" / "cache")
    run(a, "dvc", "checkout", "-q")
    # docs/team.md, "One machine trains and pushes"
    run(a, "dvc", "remote", "add", "-d", "shared", str(store))
    run(a, "git", "add", ".dvc/config")
    run(a, "git", "commit", "-qm", "the shared DVC remote")
    run(a, "dvc", "push", "-q")
    run(a, "git", "remote", "set-url", "origin", str(origin))
    run(a, "git", "push", "-q", "origin", "HEAD:main")
    run(a, "git", "tag", "-a", "models@v1.0.0", "-m", "reference run")
    run(a, "git", "push", "-q", "origin", "models@v1.0.0")
    # "Another machine pulls and predicts": nothing of A's workspace or cache is used
    b = base / "b"
    run(base, "git", "clone", "-q", "--branch", "main", str(origin), str(b))
    run(b, "dvc", "pull", "-q")
    return {"a": a, "b": b, "origin": origin, "store": store, "base": base}


def test_a_second_machine_pulls_is_up_to_date_and_retrains_nothing(
        team: dict[str, Path]) -> None:
    a, b = team["a"], team["b"]
    assert not (b / ".dvc" / "cache").resolve().is_relative_to(a)
    status = run(b, "dvc", "status")
    assert status.stdout.strip() == "Data and pipelines are up to date.", status.stdout
    for task in TASKS:
        for plane in PLANES:
            name = f"models/{task}-{plane}.pt"
            assert (b / name).read_bytes() == (a / name).read_bytes()
    assert ran_stages(run(b, "dvc", "repro", "--all-pipelines").stdout) == set()


def test_pulled_and_fetched_models_predict_the_same(team: dict[str, Path]) -> None:
    b, origin, base = team["b"], team["origin"], team["base"]
    valid = pd.read_csv(b / "data" / "probs" / "ensemble-acl.csv", dtype={"case_id": str})
    cases = valid.loc[valid["split"] == "valid", "case_id"].tolist()[:2]
    exams = exam_list(b, base / "exams.csv", cases)
    run(b, "mrnet", "predict", "--allow-synthetic", str(exams), str(base / "pulled.csv"))
    pulled = (base / "pulled.csv").read_text()
    assert len(pulled.splitlines()) == len(cases), pulled
    # `dvc get` of the models folder into another place, then predict --models with it
    fetched = base / "elsewhere" / "mrnet-models"
    fetched.parent.mkdir()
    run(fetched.parent, "dvc", "get", str(origin), "models", "-o", str(fetched))
    run(base, "mrnet", "predict", "--allow-synthetic", str(exams), str(base / "fetched.csv"),
        "--models", str(fetched))
    assert (base / "fetched.csv").read_text() == pulled
    # by artifact name, at the tagged version
    by_name = base / "elsewhere" / "by-name"
    run(fetched.parent, "dvc", "artifacts", "get", str(origin), "models", "--rev", "v1.0.0",
        "-o", str(by_name))
    assert sorted(p.name for p in by_name.glob("*.pt")) == sorted(
        f"{t}-{p}.pt" for t in TASKS for p in PLANES)
    run(base, "mrnet", "predict", "--allow-synthetic", str(exams), str(base / "by-name.csv"),
        "--models", str(by_name))
    assert (base / "by-name.csv").read_text() == pulled
    one = base / "elsewhere" / "acl-sagittal.pt"
    run(fetched.parent, "dvc", "get", str(origin), "models/acl-sagittal.pt", "-o", str(one))
    assert one.read_bytes() == (b / "models" / "acl-sagittal.pt").read_bytes()


def test_artifacts_are_declared_for_every_model(team: dict[str, Path]) -> None:
    b = team["b"]
    declared = yaml.safe_load((b / "dvc.yaml").read_text())["artifacts"]
    expected = {"models", "multitask", *(f"ensemble-{t}" for t in TASKS),
                *(f"{t}-{p}" for t in TASKS for p in PLANES)}
    assert set(declared) == expected
    for name, art in declared.items():
        assert art["type"] == "model" and art["desc"] and art["labels"], name
        assert (b / art["path"]).exists(), (name, art["path"])
    mura = yaml.safe_load((b / "mura" / "dvc.yaml").read_text())["artifacts"]
    assert set(mura) == {"mura"}
    assert (b / "mura" / mura["mura"]["path"]).is_file()


def test_an_experiment_travels_through_the_remotes(team: dict[str, Path]) -> None:
    a, b = team["a"], team["b"]
    proc = run(a, "dvc", "exp", "run", "-n", "c-half", "-S", "ensemble.C=0.5")
    assert "ensemble@acl" in ran_stages(proc.stdout)
    assert not {s for s in ran_stages(proc.stdout) if s.startswith("train")}
    metrics_a = json.loads((a / "metrics" / "acl.json").read_text())
    run(a, "dvc", "exp", "push", "origin", "c-half")
    run(b, "dvc", "exp", "pull", "origin", "c-half")
    assert "c-half" in run(b, "dvc", "exp", "list", "--name-only").stdout.split()
    run(b, "dvc", "exp", "apply", "c-half")
    assert json.loads((b / "metrics" / "acl.json").read_text()) == metrics_a
    assert (b / "models" / "ensemble-acl.json").read_bytes() == (
        a / "models" / "ensemble-acl.json").read_bytes()
