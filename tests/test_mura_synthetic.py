"""Synthetic MURA radiographs: the real layout, deterministic, and no global-intensity leak."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mrnet.mura import STUDY_TYPES
from mrnet.mura.config import SynthesizeConfig
from mrnet.mura.data import load_view, read_split
from mrnet.mura.synthetic import VALID_PATIENT_START, generate
from mrnet.mura.validate import validate_dataset

SMALL = SynthesizeConfig(seed=3, n_train=30, n_valid=10, image_size=40, views_min=1,
                         views_max=4, rgb_fraction=0.3)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mura_syn") / "MURA-v1.1"
    generate(root, SMALL)
    return root


def test_layout_counts_modes_and_views(small: Path) -> None:
    report = validate_dataset(small)  # the real contract, end to end
    assert report["train"]["studies"] == 30 and report["valid"]["studies"] == 10
    for split in ("train", "valid"):
        r = report[split]
        assert set(r["modes"]) == {"L", "RGB"}
        assert 1 <= r["views_min"] and r["views_max"] <= 4
        assert 32 <= r["height_min"] and r["height_max"] <= 50 and r["height_min"] < r["height_max"]
        # every type present, and with both labels where it has two studies
        assert all(r["per_type"][t]["studies"] >= 1 for t in STUDY_TYPES)
    train = read_split(small, "train").studies
    for t, sub in train.groupby("study_type"):
        assert len(sub) < 2 or sub["label"].nunique() == 2, t
    valid = read_split(small, "valid").studies
    assert min(int(p[len("patient"):]) for p in valid["patient"]) == VALID_PATIENT_START
    first = (small / "train_labeled_studies.csv").read_text().splitlines()[0]
    assert first.startswith("MURA-v1.1/train/XR_") and first[-3:] in ("/,0", "/,1")


def test_same_seed_same_bytes_other_seed_other_data(small: Path, tmp_path: Path) -> None:
    generate(tmp_path / "a" / "MURA-v1.1", SMALL)
    assert digest(tmp_path / "a" / "MURA-v1.1") == digest(small)
    other = SynthesizeConfig(**{**SMALL.__dict__, "seed": 4})
    generate(tmp_path / "b" / "MURA-v1.1", other)
    assert digest(tmp_path / "b" / "MURA-v1.1") != digest(small)


def test_abnormal_studies_differ_locally_not_globally(tmp_path: Path) -> None:
    """A logistic regression on each study's global intensity statistics stays near chance."""
    cfg = SynthesizeConfig(seed=0, n_train=300, n_valid=7, image_size=40, views_min=1,
                           views_max=4, rgb_fraction=0.0)
    generate(tmp_path / "MURA-v1.1", cfg)
    data = read_split(tmp_path / "MURA-v1.1", "train")
    feats = []
    for study_id in data.studies["study_id"]:
        views = [load_view(p) / 255.0 for p in data.views.loc[data.views["study_id"] == study_id,
                                                               "path"]]
        stats = np.array([[v.mean(), v.std(), np.median(v), np.percentile(v, 99), v.max(),
                           (v > 0.95).mean()] for v in views])
        feats.append([*stats.mean(0), len(views)])
    labels = data.studies["label"].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    scores = cross_val_predict(model, np.array(feats), labels, cv=5, method="predict_proba")[:, 1]
    auc = roc_auc_score(labels, scores)
    assert auc < 0.65, f"global intensity statistics predict the label (AUC {auc:.3f})"


def test_rgb_views_hold_grey_content(small: Path) -> None:
    rgb = [p for p in small.rglob("*.png") if Image.open(p).mode == "RGB"]
    assert rgb
    arr = np.asarray(Image.open(rgb[0]))
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    np.testing.assert_array_equal(load_view(rgb[0]), arr[..., 0])
