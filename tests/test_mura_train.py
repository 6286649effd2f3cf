"""MURA training: per-type loss weights, the loss, study packing, the study mean, one epoch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mrnet.core.errors import DatasetError
from mrnet.mura.config import SynthesizeConfig, params_from_dict
from mrnet.mura.model import MuraNet, imagenet_normalize, load_model, study_mean, view_batches
from mrnet.mura.prepare import load_prepared, prepare, study_set
from mrnet.mura.synthetic import generate
from mrnet.mura.train import mura_loss, study_loss_weights, train_mura, type_weights

PROJECT = Path(__file__).resolve().parents[1]


def test_type_weights_by_hand() -> None:
    # XR_WRIST: abnormal studies of 2 and 3 views (A=5), normal of 1, 1, 1 views (N=3)
    # XR_HAND: abnormal 4 views (A=4), no normal (N=0)
    # XR_ELBOW: normal 2 and 2 views (A=0, N=4)
    types = ["XR_WRIST"] * 5 + ["XR_HAND", "XR_ELBOW", "XR_ELBOW"]
    labels = [1, 1, 0, 0, 0, 1, 0, 0]
    views = [2, 3, 1, 1, 1, 4, 2, 2]
    w = type_weights(types, labels, views)
    assert w.index.tolist() == ["XR_ELBOW", "XR_HAND", "XR_WRIST"]
    assert w.loc["XR_WRIST"].tolist() == [5, 3, 3 / 8, 5 / 8]
    assert w.loc["XR_HAND"].tolist() == [4, 0, 0.0, 1.0]
    assert w.loc["XR_ELBOW"].tolist() == [0, 4, 1.0, 0.0]
    per_study = study_loss_weights(w, ["XR_WRIST", "XR_WRIST", "XR_ELBOW"],
                                   torch.tensor([1.0, 0.0, 0.0]))
    assert per_study.tolist() == [3 / 8, 5 / 8, 0.0]
    with pytest.raises(DatasetError, match="study type XR_FINGER has no training studies"):
        study_loss_weights(w, ["XR_FINGER"], torch.tensor([1.0]))


def test_view_loss_is_the_papers_weighted_bce() -> None:
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1, -0.4, 0.9])
    counts = torch.tensor([2, 1, 3])
    labels = torch.tensor([1.0, 0.0, 1.0])
    w = torch.tensor([0.25, 0.6, 0.7])  # each study's weight for its own label
    p = torch.sigmoid(logits).double()
    by_hand = [-0.25 * torch.log(p[0]), -0.25 * torch.log(p[1]), -0.6 * torch.log(1 - p[2]),
               -0.7 * torch.log(p[3]), -0.7 * torch.log(p[4]), -0.7 * torch.log(p[5])]
    assert mura_loss(logits, counts, labels, w, "view").item() == pytest.approx(
        float(sum(by_hand) / 6), rel=1e-6)
    ps = torch.stack([p[0:2].mean(), p[2:3].mean(), p[3:6].mean()])
    by_hand = (-0.25 * torch.log(ps[0]) - 0.6 * torch.log(1 - ps[1]) - 0.7 * torch.log(ps[2])) / 3
    assert mura_loss(logits, counts, labels, w, "study").item() == pytest.approx(
        float(by_hand), rel=1e-6)


def test_view_batches_pack_whole_studies_up_to_the_budget() -> None:
    counts = [3, 2, 4, 1, 9, 2]
    assert view_batches([0, 1, 2, 3, 4, 5], counts, 8) == [[0, 1], [2, 3], [4], [5]]
    assert view_batches([5, 3, 1], counts, 8) == [[5, 3, 1]]
    batches = view_batches(range(6), counts, 4)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(sum(counts[i] for i in b) <= 4 or len(b) == 1 for b in batches)


@pytest.mark.parametrize("backbone", ["densenet169", "resnet18"])
def test_study_probability_is_the_mean_of_its_views(backbone: str) -> None:
    torch.manual_seed(0)
    model = MuraNet(backbone).eval()
    views = torch.randint(0, 256, (6, 32, 32), dtype=torch.uint8)
    counts = torch.tensor([1, 3, 2])
    x = imagenet_normalize(views)
    with torch.inference_mode():
        packed = model.study_probs(x, counts)  # all views of all studies in one pass
        alone = torch.stack([torch.sigmoid(model(x[i:i + 1]))[0] for i in range(6)])
    expected = torch.stack([alone[0], alone[1:4].mean(), alone[4:6].mean()])
    torch.testing.assert_close(packed, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(study_mean(alone, counts), expected)


def test_spatial_max_pool_keeps_a_single_cell() -> None:
    """avg pools each view's map like the paper; max keeps a finding that fills one cell."""
    torch.manual_seed(0)
    avg = MuraNet("resnet18", spatial_pool="avg").eval()
    top = MuraNet("resnet18", spatial_pool="max").eval()
    top.load_state_dict(avg.state_dict())
    x = imagenet_normalize(torch.randint(0, 256, (2, 96, 96), dtype=torch.uint8))
    with torch.inference_mode():
        maps = avg.slice_features(x)
        assert maps.shape[2:] == (3, 3)  # a map of several cells, so the pools differ
        w, b = avg.classifier.weight[0], avg.classifier.bias[0]
        torch.testing.assert_close(avg(x), maps.mean(dim=(2, 3)) @ w + b)
        torch.testing.assert_close(top(x), maps.amax(dim=(2, 3)) @ w + b)
        assert not torch.allclose(avg(x), top(x))
    with pytest.raises(ValueError, match="unknown spatial_pool 'sum'"):
        MuraNet("alexnet", spatial_pool="sum")


def test_imagenet_normalisation_per_channel() -> None:
    x = imagenet_normalize(torch.tensor([[[0, 255]]], dtype=torch.uint8))
    assert x.shape == (1, 3, 1, 2)
    assert x[0, :, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224,
                                                    -0.406 / 0.225])
    assert x[0, 0, 0, 1].item() == pytest.approx((1 - 0.485) / 0.229)


TINY = SynthesizeConfig(seed=1, n_train=12, n_valid=8, image_size=40, views_min=1, views_max=3,
                        rgb_fraction=0.5)


def tiny_params(base: Path, **train: object):
    raw = copy.deepcopy(yaml.safe_load((PROJECT / "mura" / "params.yaml").read_text()))
    raw["data"]["root"] = str(base / "MURA-v1.1")
    raw["prepare"]["out"] = str(base / "prepared")
    raw["train"].update({"out": str(base / "models"), "epochs": 1, **train})
    return params_from_dict(raw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mura_train")
    generate(base / "MURA-v1.1", TINY)
    summary = prepare(base / "MURA-v1.1", base / "prepared", 64)
    assert summary["train"]["studies"] == 12 and summary["valid"]["studies"] == 8
    return base


def test_prepared_cache_keeps_studies_and_their_views(prepared: Path) -> None:
    p = load_prepared(prepared / "prepared", "train")
    assert p.views.shape[1:] == (64, 64) and p.views.dtype == np.uint8
    assert len(p.studies) == 12 and p.studies["n_views"].sum() == len(p.views)
    assert p.studies["offset"].tolist() == [0, *np.cumsum(p.studies["n_views"])[:-1]]
    data = study_set(p)
    x, counts = data.batch([2, 0])
    assert counts.tolist() == [p.studies["n_views"][2], p.studies["n_views"][0]]
    assert torch.equal(x[:counts[0]], torch.from_numpy(
        np.array(p.views[p.studies["offset"][2]:p.studies["offset"][2] + counts[0]])))


def test_training_is_deterministic_and_keeps_the_lowest_validation_loss(prepared: Path) -> None:
    params = tiny_params(prepared, epochs=2, precision="fp32", select="loss", lr=1e-3)
    summary = train_mura(params, live_dir=False)
    first = (prepared / "models" / "model.pt").read_bytes()
    model, ckpt = load_model(prepared / "models" / "model.pt")
    assert summary["epochs_run"] == 2 and len(ckpt["history"]) == 2
    losses = [row["val_loss"] for row in ckpt["history"]]
    assert ckpt["epoch"] == 1 + int(np.argmin(losses)) and ckpt["val_loss"] == min(losses)
    assert ckpt["config"]["model"] == {"backbone": "alexnet",
                                       "spatial_pool": params.model.spatial_pool}
    assert model.pool == params.model.spatial_pool
    assert ckpt["config"]["image_size"] == 64
    assert ckpt["config"]["trained_on"]["train_studies"] == 12
    weights = ckpt["config"]["type_weights"]
    assert set(weights) == {"XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS",
                            "XR_SHOULDER", "XR_WRIST"}
    assert all(w["w_abnormal"] + w["w_normal"] == pytest.approx(1.0) for w in weights.values())
    assert isinstance(model, MuraNet)
    train_mura(params, live_dir=False)
    assert (prepared / "models" / "model.pt").read_bytes() == first


def test_mura_net_is_its_own_module_with_mrnet_key_names() -> None:
    # MuraNet builds its own backbone and head (no borrowed MRNet constructor, no slice pool it
    # never uses); its state-dict keys keep the names checkpoints were written with.
    from mrnet.model import MRNet

    net = MuraNet("alexnet", spatial_pool="max")
    assert not isinstance(net, MRNet) and not hasattr(net, "config")
    assert {k.split(".")[0] for k in net.state_dict()} == {"features", "classifier"}
    assert net.classifier.out_features == 1
