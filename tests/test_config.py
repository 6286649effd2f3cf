"""params.yaml validation: every key present, known and of the right type."""

from __future__ import annotations

import copy

import pytest
from helpers import raw_params

from mrnet.config import params_from_dict
from mrnet.core.errors import ParamsError


def _without(raw: dict, section: str, key: str) -> dict:
    raw = copy.deepcopy(raw)
    del raw[section][key]
    return raw


def test_project_params_load() -> None:
    params = params_from_dict(raw_params())
    assert params.train.epochs == raw_params()["train"]["epochs"]
    assert params.evaluate.n_errors == raw_params()["evaluate"]["n_errors"]


@pytest.mark.parametrize("section, key", [("train", "epochs"), ("evaluate", "n_errors"),
                                          ("evaluate", "bootstrap"), ("data", "tune_fraction")])
def test_missing_key_is_named(section: str, key: str) -> None:
    with pytest.raises(ParamsError, match=rf"params key {section}\.{key} is missing"):
        params_from_dict(_without(raw_params(), section, key))


def test_missing_nested_key_is_named() -> None:
    raw = copy.deepcopy(raw_params())
    del raw["train"]["augment"]["flip"]
    with pytest.raises(ParamsError, match=r"train\.augment\.flip is missing"):
        params_from_dict(raw)


def test_missing_section_is_an_error() -> None:
    raw = copy.deepcopy(raw_params())
    del raw["evaluate"]
    with pytest.raises(ParamsError, match=r"evaluate\.\w+ is missing"):
        params_from_dict(raw)


def test_unknown_key_is_named() -> None:
    raw = copy.deepcopy(raw_params())
    raw["train"]["epoch"] = 3
    with pytest.raises(ParamsError, match=r"unknown params key train\.epoch"):
        params_from_dict(raw)


def test_ill_typed_key_is_named() -> None:
    raw = copy.deepcopy(raw_params())
    raw["train"]["epochs"] = "many"
    with pytest.raises(ParamsError, match=r"train\.epochs must be an integer"):
        params_from_dict(raw)


def test_task_override_needs_no_other_keys() -> None:
    raw = copy.deepcopy(raw_params())
    raw["task"]["acl"] = {"lr": 3e-4}
    params = params_from_dict(raw)
    assert params.train_for("acl").lr == 3e-4
    assert params.train_for("acl").epochs == params.train.epochs


@pytest.mark.parametrize("section", ["train", "multitask"])
def test_negative_eval_threads_is_named(section: str) -> None:
    raw = copy.deepcopy(raw_params())
    if section == "train":
        raw["train"]["eval_threads"] = -1
        key = "train.eval_threads"
    else:
        raw["multitask"]["train"] = {"eval_threads": -2}
        key = "multitask.train.eval_threads"
    with pytest.raises(ParamsError, match=rf"{key} must be at least 0, got -"):
        params_from_dict(raw)
