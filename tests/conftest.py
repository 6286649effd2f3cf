"""Shared fixtures: a tiny synthetic dataset in the MRNet-v1.0 layout, generated once, and the
end-to-end tests' trained repository (:mod:`e2e`), built once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import TrainedRepo, build_trained_repo, restore

from mrnet.config import SynthesizeConfig
from mrnet.data.synthetic import generate

# DVC and git in tests: no analytics, an identity for commits, DVCLive in test mode for unit
# tests (the end-to-end tests drop DVCLIVE_TEST for their `dvc` subprocesses).
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("DVCLIVE_TEST", "true")
for _var, _value in (("GIT_AUTHOR_NAME", "mrnet tests"), ("GIT_COMMITTER_NAME", "mrnet tests"),
                     ("GIT_AUTHOR_EMAIL", "tests@mrnet.invalid"),
                     ("GIT_COMMITTER_EMAIL", "tests@mrnet.invalid")):
    os.environ.setdefault(_var, _value)

# Small enough to generate in well under a second, big enough to have both labels of most
# tasks and slice counts that differ between exams and planes.
TINY = SynthesizeConfig(seed=0, n_train=6, n_valid=4, image_size=32, slices_min=2, slices_max=4)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic MRNet-v1.0 dataset shared by the session; do not modify it."""
    root = tmp_path_factory.mktemp("tiny") / "MRNet-v1.0"
    generate(root, TINY)
    return root


@pytest.fixture
def tiny_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`tiny_dataset` that a test may break."""
    root = tmp_path / "MRNet-v1.0"
    shutil.copytree(tiny_dataset, root)
    return root


@pytest.fixture(scope="session")
def trained_repo(tmp_path_factory: pytest.TempPathFactory) -> TrainedRepo:
    """The project in a git + DVC repository with MURA and the MRNet pipeline reproduced at
    tiny scale, shared by every end-to-end test; use it through :func:`repo`."""
    return build_trained_repo(tmp_path_factory.mktemp("e2e_repo"))


@pytest.fixture
def repo(trained_repo: TrainedRepo) -> Iterator[Path]:
    """The shared repository; put back to its committed baseline after the test, whether it
    passed or not, so no test sees another's changes."""
    try:
        yield trained_repo.path
    finally:
        restore(trained_repo.path)
