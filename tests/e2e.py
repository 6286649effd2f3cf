"""The end-to-end harness: running `git` and `dvc` in a temporary repository, params edits,
and the one trained repository that the MRNet, KneeMRI and MURA end-to-end tests share.

:func:`build_trained_repo` makes it (``conftest.py`` builds it once per session, as the
``trained_repo`` fixture); the ``repo`` fixture hands it to a test and puts it back to its
committed baseline afterwards, whatever the test did and whether or not it passed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import yaml
from helpers import PROJECT

# The tiny scale of every pipeline in the shared repository: root params.yaml sections
# (MRNet, and KneeMRI's phantoms for when a test turns KneeMRI on) and mura/params.yaml's.
MRNET_PARAMS = {
    "synthesize": {"n_train": 16, "n_valid": 10, "image_size": 48, "slices_min": 3,
                   "slices_max": 5},
    "prepare": {"image_size": 64},
    "train": {"epochs": 1, "exams_per_batch": 4},
    "task": {"abnormal": {}},  # one epoch for every CNN (params.yaml gives abnormal its own)
    "evaluate": {"bootstrap": 20},
    "kneemri": {"train": {"epochs": 1},
                "synthetic": {"out": "data/synthetic-kneemri", "seed": 0, "exams_per_folder": 3,
                              "image_size": 48, "slices_min": 4, "slices_max": 6}},
}
MURA_PARAMS = {
    "synthesize": {"n_train": 14, "n_valid": 10, "image_size": 40, "views_max": 3},
    "train": {"epochs": 1, "precision": "fp32"},
    "evaluate": {"bootstrap": 20},
    "viewer": {"n_studies": 2},
}


def env(**extra: str) -> dict[str, str]:
    """The environment of a `git`/`dvc` subprocess: stages run as they would for a user
    (DVCLive not in test mode), with this interpreter's tools first on PATH."""
    out = dict(os.environ)
    out.pop("DVCLIVE_TEST", None)
    out["PATH"] = str(Path(sys.executable).parent) + os.pathsep + out.get("PATH", "")
    out["TQDM_DISABLE"] = "1"
    out["DVC_NO_ANALYTICS"] = "1"
    out.update(extra)
    return out


def run(cwd: Path, *args: str, check: bool = True,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in ``cwd``; with ``check`` a non-zero exit fails the test, showing the
    ends of its stdout and stderr."""
    proc = subprocess.run(list(args), cwd=cwd, env=env(**(extra_env or {})),
                          capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def set_params(repo: Path, updates: dict, file: str = "params.yaml") -> None:
    """Update sections of a params file (each section's keys are replaced one level deep)."""
    path = repo / file
    raw = yaml.safe_load(path.read_text())
    for section, values in updates.items():
        raw[section].update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def ran_stages(log: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` log says it ran."""
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}


def digest_tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def init_repo(repo: Path) -> None:
    """git init + dvc init in ``repo``, the project's plot templates in, and commit it all."""
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "core.analytics", "false")
    shutil.copytree(PROJECT / ".dvc" / "plots", repo / ".dvc" / "plots")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "init")


def restore(repo: Path) -> None:
    """Back to the committed baseline: params, lock files, git-tracked outputs (metrics,
    plots, learning curves), the DVC-cached outputs they describe; untracked files go."""
    run(repo, "git", "reset", "-q", "--hard")
    run(repo, "git", "clean", "-qfd")
    run(repo, "dvc", "checkout", "-q", "--force")


class TrainedRepo(NamedTuple):
    """The shared repository and what building it showed.

    Attributes:
        path: the repository (committed after both reproductions: the baseline).
        mura_ran: the stages ``dvc repro mura/dvc.yaml`` ran (first, on the fresh copy).
        root_after_mura: whether ``dvc.lock`` and ``models/`` of the MRNet pipeline existed
            right after that MURA reproduction.
        ran: the stages the following ``dvc repro --all-pipelines`` (the README's) ran.
    """

    path: Path
    mura_ran: set[str]
    root_after_mura: dict[str, bool]
    ran: set[str]


def copy_pipeline(repo: Path) -> None:
    """The MRNet pipeline's code and definition (package, stages, dvc.yaml, params.yaml,
    .gitignore) copied into ``repo``, without what a local run left there."""
    for name in ("mrnet", "stages"):
        shutil.copytree(PROJECT / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, repo / name)


def build_trained_repo(repo: Path) -> TrainedRepo:
    """The project (both DVC pipelines) in a fresh git + DVC repository at tiny scale, with
    MURA reproduced and then every pipeline as the README does it (KneeMRI off, as by
    default), committed."""
    copy_pipeline(repo)
    # only the pipeline's definition: not what a local run left in mura/
    shutil.copytree(PROJECT / "mura", repo / "mura",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "models", "dvc.lock"))
    set_params(repo, MRNET_PARAMS)
    set_params(repo, MURA_PARAMS, "mura/params.yaml")
    init_repo(repo)
    mura_ran = ran_stages(run(repo, "dvc", "repro", "mura/dvc.yaml").stdout)
    root_after_mura = {"dvc.lock": (repo / "dvc.lock").exists(),
                       "models": (repo / "models").exists()}
    # the README's command: every pipeline of the repository (MURA's is up to date by now)
    ran = ran_stages(run(repo, "dvc", "repro", "--all-pipelines").stdout)
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    return TrainedRepo(repo, mura_ran, root_after_mura, ran)
