"""Training: loss weighting, packed-batch loss, determinism, resume, model selection."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tmp_params
from PIL import Image

from mrnet.core.errors import UserError
from mrnet.core.runtime import cpu_threads, select_device, use_bf16, wants_channels_last
from mrnet.core.trainer import (FitState, TrainingInterrupted, better, compute_pos_weight,
                                derive_seed, fit_loop, run_training, weighted_bce)
from mrnet.data.prepare import load_prepared, prepare_plane
from mrnet.model import load_checkpoint
from mrnet.training import cnn
from mrnet.training.cnn import labels_for, train_model, tune_case_ids

FAST = {"epochs": 3, "exams_per_batch": 2, "lr": 1e-4}


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_plane(tiny_dataset, "sagittal", out, 64)
    return out


def _params(tmp_path: Path, root: Path, prepared: Path, **train):
    p = tmp_params(tmp_path, root, train={**FAST, **train}, prepare={"image_size": 64})
    return p.__class__(**{**p.__dict__, "prepare": p.prepare.__class__(str(prepared), 64)})


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_pos_weight_is_neg_over_pos() -> None:
    assert compute_pos_weight(np.array([1, 0, 0, 0, 1, 0])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="both classes"):
        compute_pos_weight(np.array([1, 1]))


def test_batch_loss_is_mean_of_per_exam_losses() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = weighted_bce(logits, labels, 3.0)
    alone = [weighted_bce(logits[i:i + 1], labels[i:i + 1], 3.0) for i in range(4)]
    assert batch.item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-6)
    # the positive weight multiplies only the positive terms
    pos = -math.log(1 / (1 + math.exp(-0.3)))
    assert alone[0].item() == pytest.approx(3.0 * pos, rel=1e-5)


def test_selection_prefers_auc_then_loss() -> None:
    assert better(0.8, 1.0, 0.7, 0.1)
    assert better(0.8, 0.2, 0.8, 0.3)
    assert not better(0.8, 0.4, 0.8, 0.3)
    assert better(float("nan"), 0.2, float("nan"), 0.3)


def test_derived_seeds_differ_per_model() -> None:
    assert derive_seed(0, "acl", "axial") == derive_seed(0, "acl", "axial")
    assert derive_seed(0, "acl", "axial") != derive_seed(0, "acl", "sagittal")
    assert derive_seed(0, "acl", "axial") != derive_seed(1, "acl", "axial")


def test_training_is_deterministic(tiny_dataset: Path, prepared: Path, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        params = _params(tmp_path / name, tiny_dataset, prepared, seed=seed)
        summary = train_model(params, "abnormal", "sagittal", live_dir=False)
        assert summary["epochs_run"] == 3 and summary["selection"] == "valid"
        runs.append(_state(tmp_path / name / "models" / "abnormal-sagittal.pt"))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    # byte for byte too, so DVC does not rerun what depends on an unchanged checkpoint
    ckpt = tmp_path / "a" / "models" / "abnormal-sagittal.pt"
    first = ckpt.read_bytes()
    train_model(_params(tmp_path / "a", tiny_dataset, prepared, seed=0), "abnormal", "sagittal",
                live_dir=False)
    assert ckpt.read_bytes() == first


def test_resume_gives_the_uninterrupted_checkpoint(tiny_dataset: Path, prepared: Path,
                                                    tmp_path: Path) -> None:
    # Both runs in one folder: the checkpoint's config records the output paths.
    params = _params(tmp_path, tiny_dataset, prepared)
    ckpt = tmp_path / "models" / "abnormal-sagittal.pt"
    train_model(params, "abnormal", "sagittal", live_dir=False)
    uninterrupted = ckpt.read_bytes()
    ckpt.unlink()

    with pytest.raises(TrainingInterrupted):
        train_model(params, "abnormal", "sagittal", stop_after=1, live_dir=False)
    resume = tmp_path / "models" / ".resume" / "abnormal-sagittal.pt"
    assert resume.is_file()
    assert not ckpt.exists()
    summary = train_model(params, "abnormal", "sagittal", live_dir=False)
    assert summary["epochs_run"] == 3
    assert not resume.exists()
    a = torch.load(io.BytesIO(uninterrupted), weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["history"] == b["history"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the same bytes, too: DVC sees the same checkpoint, and nothing downstream reruns
    assert ckpt.read_bytes() == uninterrupted


@dataclass(frozen=True)
class _ScriptedCfg:
    epochs: int = 8
    patience: int = 4
    lr: float = 0.01
    weight_decay: float = 0.0
    lr_factor: float = 0.5
    lr_patience: int = 2
    eval_threads: int = 0


# Validation loss by epoch: best at epoch 1, worse every epoch after. With lr_patience 2 the
# scheduler cuts the lr at epoch 4 and with patience 4 training stops after epoch 5, both
# decided by counters that epochs 2 and 3 advanced: a run cut after epoch 3 gets the same
# history only if the scheduler's and the early-stopping state come back from the resume file.
_VAL_LOSS = {1: 1.0, 2: 1.1, 3: 1.2, 4: 1.3, 5: 1.4, 6: 1.5, 7: 1.6, 8: 1.7}


def _scripted_run(out: Path, init_seed: int, stop_after: int | None = None):
    """run_training on a linear model whose train batches come from the run's generator
    (so its train loss shows the generator, the optimiser and the weights) and whose
    validation loss follows :data:`_VAL_LOSS`."""
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(3, 1)
    current = {}

    def make_epoch(generator, optimizer):
        def run_train(epoch: int) -> dict[str, float]:
            x = torch.randn(8, 3, generator=generator)
            loss = (model(x) - 1.0).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            current["epoch"] = epoch
            return {"loss": loss.item(), "auc": 0.5}

        def run_eval() -> dict[str, float]:
            return {"loss": _VAL_LOSS[current["epoch"]], "auc": 0.5}

        return run_train, run_eval

    return run_training("scripted", model, _ScriptedCfg(), 7, make_epoch, "fingerprint",
                        out / "scripted.pt", {"kind": "scripted"}, "valid", live_dir=False,
                        stop_after=stop_after)


def test_resume_restores_scheduler_early_stopping_generator_and_history(tmp_path: Path) -> None:
    full = _scripted_run(tmp_path / "full", init_seed=0)
    # The scenario does what it is for: the lr cut and the stop both come after the cut.
    assert [h["lr"] for h in full.history] == pytest.approx([0.01] * 3 + [0.005] * 2)
    assert full.epoch == 5 and full.stopped_early and full.best_epoch == 1

    with pytest.raises(TrainingInterrupted):
        _scripted_run(tmp_path / "cut", init_seed=0, stop_after=3)
    assert (tmp_path / "cut" / ".resume" / "scripted.pt").is_file()
    # A fresh process would build the model afresh: other initial weights must not matter.
    resumed = _scripted_run(tmp_path / "cut", init_seed=1)
    assert resumed.history == full.history  # train losses: generator, optimiser, weights
    assert (resumed.epoch, resumed.best_epoch, resumed.bad_epochs, resumed.stopped_early) == (
        full.epoch, full.best_epoch, full.bad_epochs, full.stopped_early)
    a = torch.load(tmp_path / "full" / "scripted.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "scripted.pt", weights_only=True)
    assert set(a) == set(b) and set(a["model"]) == set(b["model"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert {k: v for k, v in a.items() if k != "model"} == {
        k: v for k, v in b.items() if k != "model"}
    assert (tmp_path / "full" / "scripted.pt").read_bytes() == (
        tmp_path / "cut" / "scripted.pt").read_bytes()
    assert not (tmp_path / "cut" / ".resume" / "scripted.pt").exists()


def test_resume_ignores_state_from_other_params(tiny_dataset: Path, prepared: Path,
                                                tmp_path: Path) -> None:
    cut = _params(tmp_path, tiny_dataset, prepared)
    with pytest.raises(TrainingInterrupted):
        train_model(cut, "abnormal", "sagittal", stop_after=1, live_dir=False)
    changed = _params(tmp_path, tiny_dataset, prepared, lr=3e-4)
    summary = train_model(changed, "abnormal", "sagittal", live_dir=False)
    hist = torch.load(tmp_path / "models" / "abnormal-sagittal.pt", weights_only=True)["history"]
    assert summary["epochs_run"] == 3 and all(h["lr"] == pytest.approx(3e-4) for h in hist[:1])


def test_early_stopping_stops(tiny_dataset: Path, prepared: Path, tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_dataset, prepared, epochs=30, patience=2, lr=1e-9)
    summary = train_model(params, "abnormal", "sagittal", live_dir=False)
    assert summary["stopped_early"]
    assert summary["epochs_run"] == summary["best_epoch"] + 2 < 30


def test_checkpoint_loads_weights_only(tiny_dataset: Path, prepared: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # DVCLive's test mode redirects files to a temporary folder (and rejects dvcyaml=False);
    # here the files themselves are under test.
    monkeypatch.delenv("DVCLIVE_TEST", raising=False)
    params = _params(tmp_path, tiny_dataset, prepared, epochs=1)
    train_model(params, "acl", "sagittal", live_dir=tmp_path / "live")
    model, ckpt = load_checkpoint(tmp_path / "models" / "acl-sagittal.pt")
    assert ckpt["config"]["task"] == "acl" and ckpt["config"]["plane"] == "sagittal"
    assert set(ckpt) >= {"model", "config", "epoch", "val_auc", "selection"}
    assert not model.training
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "auc.tsv").is_file()


def test_tune_fraction_selects_on_train_holdout(tiny_dataset: Path, prepared: Path,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    p = _params(tmp_path, tiny_dataset, prepared, epochs=2)
    p = p.__class__(**{**p.__dict__, "data": p.data.__class__(p.data.root, 0.34, 0)})
    # Record the exams every training epoch steps through and every selection scores.
    fitted, scored = [], []
    epoch, evaluate = cnn.exam_epoch, cnn.exam_evaluate

    def recording_epoch(model, data, *args, **kwargs):
        fitted.append(list(data.case_ids))
        return epoch(model, data, *args, **kwargs)

    def recording_evaluate(model, data, *args, **kwargs):
        scored.append(list(data.case_ids))
        return evaluate(model, data, *args, **kwargs)

    monkeypatch.setattr(cnn, "exam_epoch", recording_epoch)
    monkeypatch.setattr(cnn, "exam_evaluate", recording_evaluate)
    summary = train_model(p, "abnormal", "sagittal", live_dir=False)
    assert summary["selection"] == "tune"

    train_ids = load_prepared(prepared, "sagittal", "train").case_ids
    valid_ids = set(load_prepared(prepared, "sagittal", "valid").case_ids)
    labels = labels_for(tiny_dataset, "train", "abnormal", train_ids)
    tune = tune_case_ids(train_ids, labels, p.data, "abnormal")
    assert 0 < len(tune) < len(train_ids)
    fit = [c for c in train_ids if c not in tune]
    # Every epoch fits on exactly the train exams outside the hold-out, and the hold-out alone
    # selects: no tune exam ever trains, no valid exam is ever looked at.
    assert len(fitted) == 2 and all(ids == fit for ids in fitted)
    assert len(scored) == 2 and all(sorted(ids) == sorted(tune) for ids in scored)
    assert not set(fit) & tune and not (set(fit) | tune) & valid_ids
    # The positive weight comes from the fitted exams' labels only.
    fit_labels = labels_for(tiny_dataset, "train", "abnormal", fit)
    assert summary["pos_weight"] == pytest.approx(compute_pos_weight(fit_labels))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(
        native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu) is native
    assert wants_channels_last(cpu, use_bf16("auto", cpu)) is native
    # Explicit settings are obeyed whatever the hardware.
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)
    assert not wants_channels_last(cpu, False)


def test_device_error_names_the_key_or_option_asked(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^--device is 'cuda' but no CUDA device"):
        select_device("cuda", "--device")
    with pytest.raises(UserError, match=r"^train\.device of mura/params\.yaml is 'cuda'"):
        select_device("cuda", "train.device of mura/params.yaml")
    with pytest.raises(UserError, match=r"^train\.device is 'cuda'"):
        select_device("cuda")
    # The MURA command names its own option, not the MRNet params key.
    from mrnet.mura.predict import main as mura_main

    study = tmp_path / "study1_positive"
    study.mkdir()
    Image.fromarray(np.zeros((40, 30), dtype=np.uint8)).save(study / "image1.png")
    with pytest.raises(SystemExit) as stop:
        mura_main([str(study), "--device", "cuda", "--model", str(tmp_path / "none.pt")])
    assert stop.value.code == 2
    assert "error: --device is 'cuda' but no CUDA device" in capsys.readouterr().err


def test_cpu_threads_sets_the_count_inside_and_restores_it_after() -> None:
    before = torch.get_num_threads()
    with cpu_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), cpu_threads(before + 1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with cpu_threads(0):  # 0 leaves torch's count alone
        assert torch.get_num_threads() == before


def test_the_validation_pass_runs_on_eval_threads_and_training_on_the_rest() -> None:
    before = torch.get_num_threads()
    seen: dict[str, list[int]] = {"train": [], "eval": []}
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)

    def run_train(epoch: int) -> dict[str, float]:
        seen["train"].append(torch.get_num_threads())
        return {"loss": 1.0, "auc": 0.5}

    def run_eval() -> dict[str, float]:
        seen["eval"].append(torch.get_num_threads())
        return {"loss": 1.0, "auc": 0.5}

    cfg = _ScriptedCfg(epochs=2, eval_threads=before + 1)
    fit_loop(model, cfg, optimizer, scheduler, FitState(), run_train, run_eval)
    assert seen == {"train": [before, before], "eval": [before + 1, before + 1]}
    assert torch.get_num_threads() == before


def test_extract_with_a_checkpoint_missing_names_it_and_writes_nothing(tmp_path: Path) -> None:
    from mrnet.training.extract import extract_all

    params = tmp_params(tmp_path, tmp_path / "MRNet-v1.0")
    models = tmp_path / "models"
    models.mkdir()
    for task in ("abnormal", "acl", "meniscus"):
        for plane in ("axial", "coronal", "sagittal"):
            if (task, plane) != ("meniscus", "coronal"):
                (models / f"{task}-{plane}.pt").write_bytes(b"not read before the check")
    with pytest.raises(UserError, match=r"meniscus-coronal\.pt: model checkpoint not found"):
        extract_all(params)
    assert not (tmp_path / "probs").exists()
