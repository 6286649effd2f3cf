"""Shared fixtures: a tiny synthetic dataset in the MRNet-v1.0 layout, generated once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

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
