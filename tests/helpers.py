"""Test helpers: params pointing every path into a temporary folder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mrnet import PLANES, TASKS
from mrnet.config import Params, SynthesizeConfig, params_from_dict
from mrnet.core.params import load_yaml
from mrnet.data.prepare import prepare_plane
from mrnet.data.synthetic import generate
from mrnet.training.cnn import train_model
from mrnet.training.ensemble import run_ensemble
from mrnet.training.extract import extract_probs

PROJECT = Path(__file__).resolve().parents[1]


def raw_params() -> dict[str, Any]:
    """The project's params.yaml as a dict, read as the project and DVC read it."""
    return load_yaml(PROJECT / "params.yaml")


def without_task_overrides(raw: dict[str, Any]) -> dict[str, Any]:
    """Empty params.yaml's per-task overrides in ``raw`` (in place, and returned): the demo's
    (abnormal's epochs) are its scale, not a test's."""
    raw["task"] = {task: {} for task in raw["task"]}
    return raw


def tmp_params(tmp: Path, root: Path, **sections: dict[str, Any]) -> Params:
    """Project params with data.root = ``root``, outputs under ``tmp``, no per-task
    overrides, sections updated."""
    raw = copy.deepcopy(raw_params())
    raw["data"]["root"] = str(root)
    raw["prepare"]["out"] = str(tmp / "prepared")
    raw["train"]["out"] = str(tmp / "models")
    raw["extract"]["out"] = str(tmp / "probs")
    raw["ensemble"]["out"] = str(tmp / "models")
    without_task_overrides(raw)
    for name, values in sections.items():
        for key, value in values.items():
            raw[name][key] = value
    return params_from_dict(raw)


# 12 train / 8 valid exams of 48 px, trained at 64 px for one epoch: enough for real
# checkpoints and ensembles (both classes of every task in train) in well under a minute.
PIPELINE_DATA = SynthesizeConfig(seed=0, n_train=12, n_valid=8, image_size=48,
                                 slices_min=2, slices_max=5)


def build_tiny_pipeline(base: Path) -> Params:
    """Synthesize, prepare, train (1 epoch), extract and ensemble a tiny pipeline under ``base``.

    Built once per test session (a marker file says it is complete), so test modules share it.
    """
    root = base / "MRNet-v1.0"
    params = tmp_params(base, root, prepare={"image_size": 64},
                        train={"epochs": 1, "exams_per_batch": 4})
    done = base / "built"
    if done.is_file():
        return params
    generate(root, PIPELINE_DATA)
    for plane in PLANES:
        prepare_plane(root, plane, params.prepare.out, params.prepare.image_size)
    for task in TASKS:
        for plane in PLANES:
            train_model(params, task, plane, live_dir=False)
            extract_probs(params, task, plane)
        run_ensemble(params, task)
    done.write_text("complete\n")
    return params
