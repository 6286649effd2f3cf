"""benchmarks/seeds.py reads back a run already in its work folder, and only the same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import PROJECT

sys.path.insert(0, str(PROJECT / "benchmarks"))
from seeds import earlier  # noqa: E402

RUN = {"commit": "abc1234", "sets": ["train.seed=1", "train.precision=fp32"]}


def stored(out: Path, run: dict) -> None:
    """A result.json as a finished run leaves it (one learning row: a model that stalled)."""
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({
        "run": run, "seconds": 412,
        "tasks": {"acl": {"auc": 0.9, "calls": [True, False], "case_ids": ["1130", "1131"]}},
        "learning": [["acl-axial", 0.61, 0.97, 0.01]]}))


def test_same_run_is_read_back_with_its_learning_rows(tmp_path: Path) -> None:
    stored(tmp_path / "fp32-seed1", RUN)
    result = earlier(tmp_path / "fp32-seed1", dict(RUN))
    assert result is not None and result["seconds"] == 412
    assert result["tasks"]["acl"]["calls"] == [True, False]
    (row,) = result["learning"]
    assert row.model == "acl-axial"
    assert len(row.misses()) == 3  # the rows are Learning again, not bare lists


def test_another_commit_or_override_is_rerun(tmp_path: Path) -> None:
    stored(tmp_path / "fp32-seed1", RUN)
    assert earlier(tmp_path / "fp32-seed1", {**RUN, "commit": "def5678"}) is None
    assert earlier(tmp_path / "fp32-seed1",
                   {**RUN, "sets": [*RUN["sets"], "multitask.enabled=false"]}) is None
    assert earlier(tmp_path / "bf16-seed1", RUN) is None  # nothing there yet
