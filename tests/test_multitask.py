"""Model variants: backbones, slice pooling, and the multitask three-plane network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tmp_params

from mrnet import PLANES, TASKS
from mrnet.core.backbones import make_backbone
from mrnet.core.predict import predict
from mrnet.core.stats import sigmoid
from mrnet.core.tables import read_probs, rows
from mrnet.core.trainer import weighted_bce
from mrnet.core.weights import BACKBONES
from mrnet.data.prepare import prepare_plane
from mrnet.model import MRNet, MRNetConfig, MultitaskMRNet
from mrnet.training import multitask
from mrnet.training.cnn import labels_for, tune_case_ids
from mrnet.training.multitask import (load_multiset, multitask_batches, multitask_loss,
                                      train_multitask)

WIDTHS = {"alexnet": 256, "resnet18": 512, "resnet50": 2048, "vgg16_bn": 512,
          "densenet121": 1024, "densenet169": 1664}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_forward_and_width(backbone: str) -> None:
    torch.manual_seed(0)
    model = MRNet(MRNetConfig(backbone)).eval()
    assert model.width == WIDTHS[backbone] == make_backbone(backbone)[1]
    x = torch.randn(5, 64, 64)
    with torch.inference_mode():
        out = model(x, torch.tensor([2, 3]))
    assert out.shape == (2,) and torch.isfinite(out).all()


def test_mean_slice_pool_differs_from_max() -> None:
    torch.manual_seed(0)
    mx = MRNet(MRNetConfig("alexnet", "max")).eval()
    mean = MRNet(MRNetConfig("alexnet", "mean")).eval()
    mean.load_state_dict(mx.state_dict())
    x = torch.randn(6, 64, 64)
    with torch.inference_mode():
        a, b = mx(x), mean(x)
        single = mx(x[:1])
    assert not torch.allclose(a, b)
    with torch.inference_mode():  # with one slice, max and mean agree
        assert torch.allclose(single, mean(x[:1]), atol=1e-6)


def test_multitask_forward_with_different_slice_counts_per_plane() -> None:
    torch.manual_seed(0)
    model = MultitaskMRNet(MRNetConfig("alexnet"), PLANES).eval()
    counts = {"axial": [3, 1], "coronal": [2, 4], "sagittal": [5, 2]}
    inputs = {p: (torch.randn(sum(c), 64, 64), torch.tensor(c)) for p, c in counts.items()}
    with torch.inference_mode():
        out = model(inputs)
    assert out.shape == (2, len(TASKS))
    assert model.width == 3 * 256


def test_multitask_loss_is_mean_of_weighted_task_losses() -> None:
    logits = torch.tensor([[0.2, -1.0, 1.5], [-0.3, 0.8, 0.0], [1.1, 0.4, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    weights = [0.25, 4.0, 1.5]
    expected = sum(weighted_bce(logits[:, t], labels[:, t], w)
                   for t, w in enumerate(weights)) / 3
    assert multitask_loss(logits, labels, weights).item() == pytest.approx(expected.item())


@pytest.fixture(scope="module")
def prepared(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    for plane in PLANES:
        prepare_plane(tiny_dataset, plane, out, 64)
    return out


def _multitask_params(tmp_path: Path, root: Path, prepared: Path, epochs: int):
    params = tmp_params(tmp_path, root,
                        train={"epochs": epochs, "exams_per_batch": 3, "precision": "fp32"})
    return params.__class__(**{
        **params.__dict__,
        # Split seed 2: the hold-out (stratified by abnormal) leaves the one ACL tear of the
        # tiny train split, and a meniscus tear, to fit on.
        "data": params.data.__class__(params.data.root, 0.34, 2),
        "prepare": params.prepare.__class__(str(prepared), 64),
        "multitask": params.multitask.__class__(True, str(tmp_path / "mt"), {"lr": 3e-4}),
    })


def _valid_probs(model: torch.nn.Module, prepared: Path, root: Path) -> np.ndarray:
    cpu = torch.device("cpu")
    valid = load_multiset(prepared, root, "valid", cpu)
    return sigmoid(predict(model, multitask_batches(valid, cpu), cpu))


def _checkpoint_model(path: Path) -> MultitaskMRNet:
    ckpt = torch.load(path, weights_only=True)
    model = MultitaskMRNet(MRNetConfig(**ckpt["config"]["model"]), tuple(PLANES), len(TASKS))
    model.load_state_dict(ckpt["model"])
    return model


def test_train_multitask_writes_checkpoint_and_tables(tiny_dataset: Path, prepared: Path,
                                                      tmp_path: Path) -> None:
    params = _multitask_params(tmp_path, tiny_dataset, prepared, epochs=1)
    summary = train_multitask(params, live_dir=False)
    assert summary["epochs_run"] == 1 and summary["selection"] == "tune"
    ckpt = torch.load(tmp_path / "mt" / "model.pt", weights_only=True)
    assert ckpt["config"]["planes"] == list(PLANES) and ckpt["config"]["train"]["lr"] == 3e-4
    assert ckpt["config"]["tasks"] == list(TASKS)

    # The checkpoint's network scores valid afresh: column t of its output is task t.
    cpu = torch.device("cpu")
    valid = load_multiset(prepared, tiny_dataset, "valid", cpu)
    expected = _valid_probs(_checkpoint_model(tmp_path / "mt" / "model.pt"), prepared,
                            tiny_dataset)
    assert expected.shape == (4, len(TASKS))
    for a in range(len(TASKS)):  # the columns differ, so a column in the wrong file shows
        for b in range(a):
            assert not np.allclose(expected[:, a], expected[:, b], atol=1e-6)

    train_ids = load_multiset(prepared, tiny_dataset, "train", cpu).case_ids
    tune = tune_case_ids(train_ids, labels_for(tiny_dataset, "train", TASKS[0], train_ids),
                         params.data, TASKS[0])
    for t, task in enumerate(TASKS):
        table = read_probs(tmp_path / "mt" / f"multitask-{task}.csv")
        got = rows(table, "valid").set_index("case_id")
        assert sorted(got.index) == sorted(valid.case_ids)
        for i, case in enumerate(valid.case_ids):
            assert got.loc[case, "prob"] == pytest.approx(expected[i, t], abs=1e-6), (task, case)
        labels = labels_for(tiny_dataset, "valid", task, valid.case_ids)
        assert got.loc[valid.case_ids, "label"].tolist() == labels.astype(int).tolist()
        # Train exams are labelled by the split they played: the hold-out is "tune".
        assert set(rows(table, "tune")["case_id"]) == tune
        assert set(rows(table, "train")["case_id"]) == set(train_ids) - tune


def test_train_multitask_tables_come_from_the_selected_epoch(
        tiny_dataset: Path, prepared: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The selection signal is scripted (the real evaluation, then a val AUC that falls every
    # epoch), so epoch 1 is selected while training goes on to epoch 2; the weights the
    # network has when the last evaluation runs are kept to compare with.
    real_evaluate = multitask.evaluate
    last: dict[str, dict[str, torch.Tensor]] = {}
    epochs: list[int] = []

    def scripted(model, *args, **kwargs):
        result = real_evaluate(model, *args, **kwargs)
        last["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epochs.append(len(epochs) + 1)
        return {"loss": result["loss"], "auc": 0.9 - 0.1 * epochs[-1]}

    monkeypatch.setattr(multitask, "evaluate", scripted)
    params = _multitask_params(tmp_path, tiny_dataset, prepared, epochs=2)
    summary = train_multitask(params, live_dir=False)
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 1
    assert torch.load(tmp_path / "mt" / "model.pt", weights_only=True)["epoch"] == 1

    selected = _valid_probs(_checkpoint_model(tmp_path / "mt" / "model.pt"), prepared,
                            tiny_dataset)
    final = _checkpoint_model(tmp_path / "mt" / "model.pt")
    final.load_state_dict(last["state"])
    last_epoch = _valid_probs(final, prepared, tiny_dataset)
    assert not np.allclose(selected, last_epoch, atol=1e-6)  # the test can tell them apart
    ids = load_multiset(prepared, tiny_dataset, "valid", torch.device("cpu")).case_ids
    for t, task in enumerate(TASKS):
        got = rows(read_probs(tmp_path / "mt" / f"multitask-{task}.csv"), "valid")
        got = got.set_index("case_id").loc[ids, "prob"].to_numpy()
        np.testing.assert_allclose(got, selected[:, t], atol=1e-6, err_msg=task)
