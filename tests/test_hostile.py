"""Hostile and odd inputs: each ends in the right output or one line naming the file or key,
with nothing run and nothing written or overwritten."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROJECT

from mrnet.config import load_params
from mrnet.core.errors import ParamsError
from mrnet.core.params import parse_yaml
from mrnet.mura.config import load_params as load_mura_params


def edited(text: str, section: str, key: str, value: str) -> str:
    """``text`` of a params file with ``section``'s line ``key: ...`` set to ``value``."""
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    for i in range(start + 1, len(lines)):
        m = re.match(rf"^(\s+){re.escape(key)}:", lines[i])
        if m:
            lines[i] = f"{m.group(1)}{key}: {value}"
            return "\n".join(lines) + "\n"
        if lines[i] and not lines[i][0].isspace() and not lines[i].startswith("#"):
            break
    raise AssertionError(f"no {section}.{key} in the params file")


def params_with(tmp_path: Path, section: str, key: str, value: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(edited((PROJECT / "params.yaml").read_text(), section, key, value))
    return path


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
@pytest.mark.parametrize("section, key, name", [
    ("train", "lr", "train.lr"), ("train", "weight_decay", "train.weight_decay"),
    ("train", "rotation", "train.augment.rotation"), ("ensemble", "C", "ensemble.C"),
    ("kneemri", "roi_scale", "kneemri.roi_scale")])
def test_non_finite_number_is_refused_naming_the_key(tmp_path: Path, section: str, key: str,
                                                     name: str, value: str) -> None:
    path = params_with(tmp_path, section, key, value)
    with pytest.raises(ParamsError, match=rf"^params key {re.escape(name)} must be a finite "
                                          r"number, got -?(nan|inf)$"):
        load_params(path)


def test_non_finite_number_is_refused_in_mura_params(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(edited((PROJECT / "mura" / "params.yaml").read_text(), "train", "lr",
                           ".nan"))
    with pytest.raises(ParamsError, match=r"params key train\.lr must be a finite number"):
        load_mura_params(path)


def test_non_finite_number_in_a_task_override_is_refused(tmp_path: Path) -> None:
    path = params_with(tmp_path, "task", "acl", "{lr: .inf}")
    with pytest.raises(ParamsError, match=r"params key task\.acl\.lr must be a finite number"):
        load_params(path)


def test_leading_zero_int_is_decimal_as_dvc_reads_it(tmp_path: Path) -> None:
    # YAML 1.1 reads 010 as octal 8; DVC (YAML 1.2) records 10. Training must run what DVC
    # records.
    assert load_params(params_with(tmp_path, "train", "epochs", "010")).train.epochs == 10


@pytest.mark.parametrize("word", ["no", "yes", "off", "on", "No"])
def test_yaml11_boolean_words_are_strings_hence_a_type_error(tmp_path: Path, word: str) -> None:
    path = params_with(tmp_path, "model", "pretrained", word)
    with pytest.raises(ParamsError, match=rf"^params key model\.pretrained must be true or "
                                          rf"false, got '{word}'$"):
        load_params(path)


def test_duplicate_key_is_refused_naming_key_file_and_line(tmp_path: Path) -> None:
    text = (PROJECT / "params.yaml").read_text().replace("  epochs: 8\n",
                                                         "  epochs: 8\n  epochs: 3\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    line = text.splitlines().index("  epochs: 3") + 1
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}:{line}: duplicate key "
                                          r"'epochs' in the mapping that starts at line \d+"):
        load_params(path)


def test_duplicate_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT / "params.yaml").read_text() + "\ntrain:\n  epochs: 2\n")
    with pytest.raises(ParamsError, match=r"duplicate key 'train'"):
        load_params(path)


# Documents on which YAML 1.1 and YAML 1.2 readers disagree, or that a careless reader takes.
TRICKY = [
    "a: 010\n", "a: 08\n", "a: 0o17\n", "a: 0x1F\n", "a: 1_000\n", "a: 1e-5\n", "a: 1E+3\n",
    "a: 1.0e-05\n", "a: .5\n", "a: 1.\n", "a: +7\n", "a: -0\n", "a: 1:20\n", "a: no\n",
    "a: Yes\n", "a: ON\n", "a: true\n", "a: False\n", "a: ~\n", "a: null\n", "a: ''\n",
    "a: .nan\n", "a: -.inf\n", "a: 0b101\n", "a: '010'\n", "a: [1, 010, no]\n",
    "a: {b: 010, c: off}\n", "a: 2024-01-02\n", "a: &x 5\nb: *x\n",
]


@pytest.mark.parametrize("text", TRICKY)
def test_loader_reads_what_dvc_reads(text: str) -> None:
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml

    ours = parse_yaml(text, "params.yaml")
    theirs = dvc_parse_yaml(text, "params.yaml")

    def same(a: object, b: object) -> bool:
        if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
            return math.isnan(b)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list) and isinstance(b, list):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return type(a) is type(b) and a == b

    assert same(ours, theirs), (ours, theirs)


@pytest.mark.parametrize("text", ["a: 1\na: 2\n", "a:\n  b: 1\n  b: 1\n", "a: [1\n",
                                  "a: 'x\n", "- a\nb: 1\n"])
def test_loader_refuses_what_dvc_refuses(text: str) -> None:
    from dvc.utils.serialize import parse_yaml as dvc_parse_yaml
    from dvc.utils.serialize import ParseError as DvcYamlError

    with pytest.raises(DvcYamlError):
        dvc_parse_yaml(text, "params.yaml")
    with pytest.raises(ParamsError, match=r"^params\.yaml:\d+: (duplicate key|not valid YAML)"):
        parse_yaml(text, "params.yaml")


def test_bad_params_stop_a_stage_in_one_line_before_it_writes(tmp_path: Path) -> None:
    params_with(tmp_path, "train", "lr", ".nan")
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    run = subprocess.run([sys.executable, str(PROJECT / "stages" / "validate.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == \
        "error: params key train.lr must be a finite number, got nan"
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
