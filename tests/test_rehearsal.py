"""The paper-scale rehearsal (benchmarks/rehearsal.py), at a tiny size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import PROJECT

from mrnet import PLANES
from mrnet.data.validate import validate_dataset

sys.path.insert(0, str(PROJECT / "benchmarks"))
from rehearsal import write_dataset  # noqa: E402

pytestmark = [pytest.mark.slow]

SCRIPT = PROJECT / "benchmarks" / "rehearsal.py"


def test_dataset_has_the_real_layout_and_shape(tmp_path: Path) -> None:
    root = tmp_path / "MRNet-v1.0"
    info = write_dataset(root, 10, 6, 64, 3, 7, seed=1)
    report = validate_dataset(root)  # the pipeline's own contract check
    assert report["train"]["exams"] == 10 and report["valid"]["exams"] == 6
    ids = sorted(p.stem for p in (root / "valid" / "axial").glob("*.npy"))
    assert ids == [f"{i}" for i in range(1130, 1136)]
    counts = {p: [np.load(f, mmap_mode="r").shape for f in (root / "train" / p).glob("*.npy")]
              for p in PLANES}
    for plane, shapes in counts.items():
        assert all(3 <= s[0] <= 7 and s[1:] == (64, 64) for s in shapes)
        assert sum(s[0] for s in shapes) <= info["slices"][plane]
    # Slice counts differ between the planes of one exam, as in MRNet.
    per_exam = [[np.load(root / "train" / p / f"{i:04d}.npy", mmap_mode="r").shape[0]
                 for p in PLANES] for i in range(10)]
    assert any(len(set(n)) > 1 for n in per_exam), per_exam


def test_rehearsal_runs_every_step_and_reports_time_and_memory(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--train", "8", "--valid", "4",
                           "--size", "64", "--slices-min", "2", "--slices-max", "4",
                           "--workdir", str(tmp_path), "--precision", "fp32"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "8 train + 4 valid exams, three planes, 64x64 uint8, 2-4 slices" in out
    for step in ("validate", "prepare", "train"):
        row = re.search(rf"^{step} +(\d+\.\d\d) +([\d,]+)  ", out, re.M)
        assert row, (step, out)
        # Every step imports numpy at least (peak RSS well over 10 MiB); training takes time.
        assert int(row.group(2).replace(",", "")) > 10
        assert step != "train" or float(row.group(1)) > 0
    assert re.search(r"^validate .*  8 train exams$", out, re.M)
    assert re.search(r"^prepare .*  sagittal: \d+ MiB cached$", out, re.M)
    assert "1 epoch of acl-sagittal (train pass + valid evaluation)" in out
    assert "precision fp32" in out
    assert re.search(r"^epoch: \d+\.\d s$", out, re.M)
    assert list(tmp_path.iterdir()) == []  # the dataset and caches are removed
