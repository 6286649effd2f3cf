"""Test helpers: params pointing every path into a temporary folder."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mrnet.config import Params, params_from_dict

PROJECT = Path(__file__).resolve().parents[1]


def raw_params() -> dict[str, Any]:
    """The project's params.yaml as a dict."""
    return yaml.safe_load((PROJECT / "params.yaml").read_text())


def tmp_params(tmp: Path, root: Path, **sections: dict[str, Any]) -> Params:
    """Project params with data.root = ``root``, outputs under ``tmp``, sections updated."""
    raw = copy.deepcopy(raw_params())
    raw["data"]["root"] = str(root)
    raw["prepare"]["out"] = str(tmp / "prepared")
    raw["train"]["out"] = str(tmp / "models")
    raw["extract"]["out"] = str(tmp / "probs")
    raw["ensemble"]["out"] = str(tmp / "models")
    for name, values in sections.items():
        for key, value in values.items():
            raw[name][key] = value
    return params_from_dict(raw)
