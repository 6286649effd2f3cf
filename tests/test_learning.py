"""The CNNs learn the phantoms' findings: well above the no-leak baseline, in fp32 and bf16."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import raw_params, tmp_params

from mrnet.config import SynthesizeConfig
from mrnet.core.trainer import output_collapsed
from mrnet.data.prepare import prepare_plane
from mrnet.data.synthetic import generate
from mrnet.model import exam_logits, load_checkpoint
from mrnet.training.cnn import load_exam_set, train_model

pytestmark = [pytest.mark.slow]

# The global-statistics baseline stays <= 0.65 on phantoms (tests/test_synthetic.py); a CNN
# that learned the ligament's shape gets far above it, a broken one cannot. The data, the
# resolution and the budget are the demo's own (params.yaml), so a cheaper demo that stops
# learning fails here.
BAR = 0.80
DEMO = raw_params()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("learn")
    root = base / "MRNet-v1.0"
    synth = {k: v for k, v in DEMO["synthesize"].items() if k != "out"}
    generate(root, SynthesizeConfig(**synth))
    prepare_plane(root, "sagittal", base / "prepared", DEMO["prepare"]["image_size"])
    return root, base / "prepared"


def _train(tmp: Path, root: Path, prepared: Path, precision: str) -> dict:
    params = tmp_params(tmp, root, train={"precision": precision}, task=DEMO["task"])
    params = dataclasses.replace(params, prepare=dataclasses.replace(params.prepare,
                                                                     out=str(prepared)))
    return train_model(params, "acl", "sagittal", live_dir=False)


def test_acl_sagittal_learns_the_tear(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _train(tmp_path, *phantoms, "fp32")
    assert summary["val_auc"] > BAR, summary
    # and not by a lucky ranking of near-equal outputs: the selected model's logits spread
    # and the train loss left the constant-output loss (tests/test_collapse.py)
    root, prepared = phantoms
    model, ckpt = load_checkpoint(tmp_path / "models" / "acl-sagittal.pt")
    cpu = torch.device("cpu")
    valid = load_exam_set(prepared, root, "sagittal", "valid", "acl", cpu)
    train = load_exam_set(prepared, root, "sagittal", "train", "acl", cpu)
    logits = exam_logits(model, valid, cpu)
    losses = [row["train_loss"] for row in ckpt["history"]]
    assert not output_collapsed(losses, logits, train.labels.numpy()), (losses, logits.std())


def test_bf16_learns_as_well(phantoms: tuple[Path, Path], tmp_path: Path) -> None:
    summary = _train(tmp_path, *phantoms, "bf16")
    assert summary["val_auc"] > BAR, summary
    ckpt = torch.load(tmp_path / "models" / "acl-sagittal.pt", weights_only=True)
    assert ckpt["config"]["train"]["precision"] == "bf16"
