"""Pretrained weights: the hash in torchvision's file name is checked, the weights stage records
what the CNNs start from, and with model.pretrained false it costs nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from helpers import PROJECT

import mrnet.core.weights
from mrnet.core.errors import WeightsNotFoundError
from mrnet.core.weights import WeightsHashError, expected_prefix, verify_file, weights_record
from mrnet.model import MRNet, MRNetConfig

URL = "https://example.invalid/models/alexnet-test.pth"


def write_tiny_alexnet(folder: Path) -> Path:
    """An AlexNet state dict of the right shapes in a few kilobytes, named like torchvision's
    files: NAME-<first 8 hex digits of its sha256>.pth.

    Each tensor is one value broadcast to its shape (stride 0), so only that value is stored;
    the value is the tensor's index, so a test can tell that every tensor was loaded.
    """
    shapes = torchvision.models.alexnet(weights=None).state_dict()
    state = {k: torch.full((1,), float(i)).expand(v.shape) for i, (k, v) in enumerate(shapes.items())}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tiny.pth"
    torch.save(state, tmp)
    prefix = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = folder / f"alexnet-tiny-{prefix}.pth"
    tmp.rename(path)
    assert path.stat().st_size < 20_000
    return path


@pytest.fixture
def cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny AlexNet weights file that the code takes for torchvision's published one."""
    path = write_tiny_alexnet(tmp_path / "hub" / "checkpoints")
    monkeypatch.setattr(mrnet.core.weights, "published", lambda backbone: (path, URL))
    return path


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_hash_prefix_is_read_from_torchvision_names() -> None:
    assert expected_prefix("alexnet-owt-7be5be79.pth") == "7be5be79"
    assert expected_prefix("/x/resnet18-f37072fd.pth") == "f37072fd"
    for backbone in ("alexnet", "resnet18", "densenet121"):
        path, url = mrnet.core.weights.published(backbone)
        assert path.name == url.rsplit("/", 1)[1] and len(expected_prefix(path)) >= 8
    with pytest.raises(WeightsHashError, match=r"weights\.pth: the file name carries no sha256"):
        expected_prefix("weights.pth")


def test_intact_file_passes_and_a_corrupted_one_is_refused(cached: Path) -> None:
    assert verify_file(cached) == hashlib.sha256(cached.read_bytes()).hexdigest()
    corrupt(cached)
    with pytest.raises(WeightsHashError) as info:
        verify_file(cached, URL)
    message = str(info.value)
    assert message.startswith(f"{cached}: sha256 begins ")
    assert f"its name says {expected_prefix(cached)}" in message and URL in message


def test_pretrained_model_loads_the_checked_file_and_refuses_a_corrupted_one(
        cached: Path) -> None:
    model = MRNet(MRNetConfig("alexnet"), pretrained=True)
    # The first convolution got tensor 0's value, the last one its own index.
    assert torch.all(model.features[0].weight == 0.0)
    assert torch.all(model.features[0].bias == 1.0)
    assert torch.all(model.features[10].bias == 9.0)
    corrupt(cached)
    with pytest.raises(WeightsHashError, match="corrupt, truncated or not the published one"):
        MRNet(MRNetConfig("alexnet"), pretrained=True)


def test_record_names_file_address_and_sha256(cached: Path) -> None:
    record = weights_record("alexnet", True)
    assert record == {"backbone": "alexnet", "pretrained": True, "file": cached.name,
                      "url": URL, "sha256": hashlib.sha256(cached.read_bytes()).hexdigest(),
                      "bytes": cached.stat().st_size}
    assert str(cached.parent) not in json.dumps(record)  # no machine paths in the record


def test_missing_file_says_which_file_to_place_where(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = mrnet.core.weights.published("alexnet")
    assert path == tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        weights_record("alexnet", True)
    assert str(info.value) == (f"model.pretrained is true but {path} does not exist: download "
                               f"{url} on a machine with internet and copy it there (or set "
                               "model.pretrained: false)")


def _run_stage(cwd: Path, pretrained: bool, torch_home: Path) -> subprocess.CompletedProcess:
    """Run the weights stage in ``cwd`` with the project's params (model.pretrained set);
    without pretrained weights the process must end without torch imported."""
    params = (PROJECT / "params.yaml").read_text()
    assert "pretrained: false" in params and "  init: kaiming" in params
    if pretrained:  # pretrained weights start as they were trained: init must be 'default'
        params = params.replace("pretrained: false", "pretrained: true").replace(
            "  init: kaiming", "  init: default")
    (cwd / "params.yaml").write_text(params)
    code = ("import sys, runpy\n"
            "sys.argv = ['stages.weights']\n"
            "try:\n"
            "    runpy.run_module('stages.weights', run_name='__main__')\n"
            "finally:\n"
            f"    assert {pretrained} or 'torch' not in sys.modules, 'imported torch'\n")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TORCH_HOME": str(torch_home)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_stage_without_pretrained_writes_a_note_and_never_imports_torch(tmp_path: Path) -> None:
    proc = _run_stage(tmp_path, False, tmp_path / "torch")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "models" / "pretrained.json").read_text())
    assert record["pretrained"] is False and record["backbone"] == "alexnet"


def test_stage_with_pretrained_and_no_file_exits_with_one_line(tmp_path: Path) -> None:
    proc = _run_stage(tmp_path, True, tmp_path / "torch")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "alexnet-owt-7be5be79.pth does not exist: download " in errors[0]
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in errors[0]
    assert not (tmp_path / "models" / "pretrained.json").exists()
