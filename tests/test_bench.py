"""Smoke test of benchmarks/bench_train.py: it runs on tiny flags and prints its report format.

Not a timing assertion: the figures depend on the machine and its load.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "benchmarks" / "bench_train.py"
NUMBER = r"\d+\.\d+"


def run_bench(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=PROJECT,
                          capture_output=True, text=True, timeout=600)


def test_bench_runs_and_reports() -> None:
    proc = run_bench("--exams", "3", "--size", "64", "--slices-min", "2", "--slices-max", "4",
                     "--repeats", "1", "--warmup", "0", "--device", "cpu",
                     "--exams-per-batch", "2", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup: \d+\.\d\d", lines[-1]), lines[-1]
    assert lines[0].startswith("device:    cpu (") and "torch " in lines[0]
    assert re.search(r", \d+ threads$", lines[0])
    assert "3 synthetic exams, 64x64 px" in proc.stdout
    assert "2 exams per batch" in proc.stdout
    rates = {}
    for name in ("reference", "ours"):
        row = [line for line in lines if line.startswith(f"{name} ")]
        assert len(row) == 1, proc.stdout
        # name, median exams/s, the one run (repeats 1), CPU s/exam, peak RSS MiB, no GPU
        m = re.fullmatch(rf"{name}\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+(\d+)\s+-",
                         row[0])
        assert m, row[0]
        assert m.group(1) == m.group(2)  # the median of one run is that run
        assert float(m.group(1)) > 0 and float(m.group(3)) > 0 and int(m.group(4)) > 0
        rates[name] = float(m.group(1))
    speedup = float(lines[-1].split()[1])
    assert abs(speedup - rates["ours"] / rates["reference"]) <= 0.01 * speedup + 0.01


def test_bench_rejects_bad_flags() -> None:
    proc = run_bench("--size", "32")
    assert proc.returncode == 2
    assert "--size must be at least 64" in proc.stderr
    proc = run_bench("--slices-min", "9", "--slices-max", "3")
    assert proc.returncode == 2
    assert "--slices-min <= --slices-max" in proc.stderr


def test_backbone_bench_reports_each_backbone() -> None:
    proc = subprocess.run([sys.executable, str(PROJECT / "benchmarks" / "bench_backbones.py"),
                           "--size", "64", "--slices", "2", "--repeats", "1",
                           "--backbones", "alexnet,resnet18"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:]}
    assert set(rows) == {"alexnet", "resnet18"}
    assert rows["alexnet"][1] == "256" and rows["resnet18"][1] == "512"
    assert float(rows["alexnet"][2]) > 0 and float(rows["alexnet"][3]) > 0
