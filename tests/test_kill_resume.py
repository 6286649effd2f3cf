"""A real kill: the train stage killed with SIGKILL during an epoch, then run again, writes the
checkpoint and the learning curves of a run that was never interrupted, byte for byte."""

from __future__ import annotations

import copy
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from e2e import digest_tree, env
from helpers import PROJECT, raw_params, without_task_overrides

from mrnet.config import SynthesizeConfig
from mrnet.data.prepare import prepare_plane
from mrnet.data.synthetic import generate

pytestmark = pytest.mark.slow

TASK, PLANE = "acl", "sagittal"
NAME = f"{TASK}-{PLANE}"
# A few dozen tiny exams, trained long enough for the scheduler (lr_patience 1) and early
# stopping (patience 3) to count bad epochs, so that a kill lands while their counters hold
# something the rerun must get back.
DATA = SynthesizeConfig(seed=0, n_train=16, n_valid=8, image_size=32, slices_min=2,
                        slices_max=3)
# fp32: the reference precision, and the cheaper one on CPU.
TRAIN = {"epochs": 12, "patience": 3, "lr_patience": 1, "exams_per_batch": 4,
         "precision": "fp32"}


def _env() -> dict[str, str]:
    # the stage imports the project from here; it writes its learning curves as for a user
    return env(PYTHONPATH=str(PROJECT))


def _command() -> list[str]:
    return [sys.executable, "-m", "stages.train", "--task", TASK, "--plane", PLANE]


def _project(base: Path, data: Path, prepared: Path) -> Path:
    """A working folder with its own params.yaml (relative paths, as the stage reads them)
    and a copy of the data and the prepared cache."""
    base.mkdir()
    shutil.copytree(data, base / "data" / "MRNet-v1.0")
    shutil.copytree(prepared, base / "data" / "prepared")
    raw = copy.deepcopy(raw_params())
    raw["data"]["root"] = "data/MRNet-v1.0"
    raw["prepare"].update({"out": "data/prepared", "image_size": 64})
    raw["train"].update({"out": "models", **TRAIN})
    without_task_overrides(raw)  # TRAIN's epochs for every task
    (base / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return base


def _run_stage(cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(), cwd=cwd, env=_env(), capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _outputs(cwd: Path) -> dict[str, str]:
    """Digests of what the stage writes: its checkpoint and its DVCLive folder."""
    return {"checkpoint": hashlib.sha256((cwd / "models" / f"{NAME}.pt").read_bytes()
                                         ).hexdigest(),
            **{f"dvclive/{k}": v for k, v in digest_tree(cwd / "dvclive" / NAME).items()}}


def _counters(resume: Path) -> tuple[int, int, int] | None:
    """(epochs finished, early-stopping bad epochs, scheduler bad epochs) of a resume file,
    or None while there is none."""
    try:
        saved = torch.load(resume, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    return (saved["state"]["epoch"], saved["state"]["bad_epochs"],
            saved["scheduler"]["num_bad_epochs"])


def test_sigkill_during_an_epoch_then_rerun_gives_the_uninterrupted_files(
        tmp_path: Path) -> None:
    data = tmp_path / "MRNet-v1.0"
    generate(data, DATA)
    prepared = tmp_path / "prepared"
    prepare_plane(data, PLANE, prepared, 64)

    full = _project(tmp_path / "full", data, prepared)
    _run_stage(full)
    expected = _outputs(full)
    epochs_run = len(torch.load(full / "models" / f"{NAME}.pt", weights_only=True)["history"])

    cut = _project(tmp_path / "cut", data, prepared)
    resume = cut / "models" / ".resume" / f"{NAME}.pt"
    proc = subprocess.Popen(_command(), cwd=cut, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        seen = None
        while proc.poll() is None:
            stamp = resume.stat().st_mtime_ns if resume.is_file() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                counters = _counters(resume)
                # Kill once both counters hold bad epochs and the run has epochs to go: the
                # process is then in the next epoch, whose work is lost.
                if counters and counters[0] < epochs_run and counters[1] > 0 and counters[2] > 0:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = counters
                    break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_at is not None, (
        "the run never reached an epoch with bad epochs on both counters before its last; "
        f"the test's train settings {TRAIN} no longer make the resume state matter")
    assert proc.returncode == -signal.SIGKILL
    assert not (cut / "models" / f"{NAME}.pt").exists()
    assert resume.is_file()

    rerun = _run_stage(cut)
    assert f"resuming after epoch {killed_at[0]}" in rerun.stderr
    assert not resume.exists()
    assert _outputs(cut) == expected
