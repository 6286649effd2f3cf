"""mura/params.yaml: typed, validated; a bad key is a ParamsError naming it."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from mrnet.core.errors import ParamsError
from mrnet.mura.config import ModelConfig, MuraParams, PrepareConfig, load_params, params_from_dict

PROJECT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((PROJECT / "mura" / "params.yaml").read_text())


def test_project_params_load_as_the_cpu_demo() -> None:
    params = load_params(PROJECT / "mura" / "params.yaml")
    assert isinstance(params, MuraParams)
    assert params.data.root == "mura/data/synthetic/MURA-v1.1"
    assert params.model.backbone == "alexnet" and params.model.pretrained is False
    assert params.train.select == "loss" and params.train.loss == "view"
    assert params.train.augment.rotation == 0.0 and params.train.augment.flip == 0.5
    assert params.model.spatial_pool == "avg"


def test_dataclass_defaults_are_the_papers_recipe() -> None:
    assert ModelConfig() == ModelConfig(backbone="densenet169", pretrained=True)
    assert ModelConfig().spatial_pool == "avg" and ModelConfig().init == "default"
    assert PrepareConfig().image_size == 320


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "lr_rate", 1e-3, "unknown params key train.lr_rate"),
    ("train", "views_per_batch", "8", "params key train.views_per_batch must be an integer"),
    ("train", "select", "newest", "train.select must be one of loss, auc"),
    ("model", "backbone", "vit", "model.backbone must be one of"),
    ("model", "pretrained", "yes", "params key model.pretrained must be true or false"),
    ("model", "spatial_pool", "mean", "model.spatial_pool must be one of avg, max, got 'mean'"),
    ("evaluate", "threshold", 1.5, "evaluate.threshold must be in (0, 1)"),
    ("synthesize", "views_max", 0, "synthesize: need 1 <= views_min <= views_max"),
    ("prepare", "image_size", 32, "prepare.image_size must be at least 64"),
])
def test_bad_values_name_the_key(section: str, key: str, value: object, message: str) -> None:
    raw = copy.deepcopy(RAW)
    raw[section][key] = value
    with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        params_from_dict(raw)


def test_missing_key_and_section_are_errors() -> None:
    raw = copy.deepcopy(RAW)
    del raw["train"]["augment"]["flip"]
    with pytest.raises(ParamsError, match=r"params key train.augment.flip is missing"):
        params_from_dict(raw)
    raw = copy.deepcopy(RAW)
    del raw["viewer"]
    with pytest.raises(ParamsError, match=r"params section viewer is missing"):
        params_from_dict(raw)
    raw = copy.deepcopy(RAW)
    raw["ensemble"] = {}
    with pytest.raises(ParamsError, match=r"unknown params section 'ensemble'"):
        params_from_dict(raw)


def test_numbers_are_read_as_dvc_writes_them(tmp_path: Path) -> None:
    # `dvc exp run -S mura/params.yaml:train.lr=1e-5` writes 1e-05, which YAML 1.1 reads as
    # text; MURA reads its params with the same YAML 1.2 number rule as MRNet.
    text = re.sub(r"(?m)^  lr: \S+", "  lr: 1e-05", (PROJECT / "mura" / "params.yaml").read_text())
    assert "lr: 1e-05" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.train.lr == 1e-05 and isinstance(params.train.lr, float)
