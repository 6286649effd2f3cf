"""KneeMRI zero-shot scoring: the ACL sagittal CNN's probabilities, the ACL ensemble with the
missing planes imputed at their fit-split means, and the ensemble's AUC equal to the CNN's."""

from __future__ import annotations

import dataclasses
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tmp_params

from mrnet.config import KneemriSyntheticConfig, Params
from mrnet.core.errors import UserError
from mrnet.core.tables import make_probs, read_probs, write_probs
from mrnet.kneemri.evaluate import evaluate_external
from mrnet.kneemri.prepare import prepare_kneemri, prepared_dir
from mrnet.kneemri.reader import KNEEMRI_TASKS, TABLE_SPLITS, read_labels_table, table_path
from mrnet.kneemri.synthetic import generate_kneemri
from mrnet.kneemri.zero_shot import impute_planes, zero_shot
from mrnet.model import MRNet, MRNetConfig, normalize

TINY = KneemriSyntheticConfig(seed=0, exams_per_folder=3, image_size=48, slices_min=4,
                              slices_max=6)

# The ACL ensemble, written by hand: a positive sagittal coefficient (the case the README's
# claim is about) and coefficients of both signs for the imputed planes.
ENSEMBLE = {"planes": ["axial", "coronal", "sagittal"],
            "coef": {"axial": 0.7, "coronal": -1.3, "sagittal": 2.1}, "intercept": -0.4,
            "fit_split": "tune"}
# Per plane and split, the probabilities of the extract stage's tables: each split's mean
# differs from the others', and within a split the mean from the median.
PLANE_PROBS = {"axial": {"train": [0.1, 0.2, 0.9], "tune": [0.3, 0.35, 0.85],
                         "valid": [0.6, 0.7, 0.95]},
               "coronal": {"train": [0.8, 0.9, 0.1], "tune": [0.2, 0.25, 0.75],
                           "valid": [0.4, 0.5, 0.05]}}


def _extract_tables(folder: Path) -> None:
    for plane, by_split in PLANE_PROBS.items():
        ids, splits, probs = [], [], []
        for split, values in by_split.items():
            ids += [f"{split}{i}" for i in range(len(values))]
            splits += [split] * len(values)
            probs += values
        write_probs(folder / f"acl-{plane}.csv", make_probs(ids, splits, [0, 1] * 4 + [0], probs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, MRNet]:
    """Phantoms prepared at 64 px, an ACL sagittal checkpoint, the ensemble and the tables
    it imputes from."""
    base = tmp_path_factory.mktemp("zero_shot")
    generate_kneemri(base / "KneeMRI", TINY)
    params = tmp_params(base, base / "MRNet-v1.0", train={"precision": "fp32"},
                        kneemri={"root": str(base / "KneeMRI"), "out": str(base / "kneemri")})
    prepare_kneemri(base / "KneeMRI", prepared_dir(params), "roi", 2.0, 64)
    # Untrained weights serve: the claim is about the ensemble, whatever the CNN learned.
    torch.manual_seed(0)
    model = MRNet(MRNetConfig()).eval()
    models = Path(params.train_for("acl").out)
    models.mkdir(parents=True)
    torch.save({"model": model.state_dict(),
                "config": {"model": dataclasses.asdict(MRNetConfig()), "image_size": 64}},
               models / "acl-sagittal.pt")
    Path(params.ensemble.out).mkdir(parents=True, exist_ok=True)
    Path(params.ensemble.out, "ensemble-acl.json").write_text(json.dumps(ENSEMBLE))
    Path(params.extract.out).mkdir(parents=True)
    _extract_tables(Path(params.extract.out))
    return params, model


def test_imputed_planes_are_the_fit_split_means(setup: tuple[Params, MRNet]) -> None:
    params, _ = setup
    for split in ("tune", "train"):
        means = impute_planes({**ENSEMBLE, "fit_split": split}, params.extract.out)
        assert means == pytest.approx({p: float(np.mean(v[split]))
                                       for p, v in PLANE_PROBS.items()})
    with pytest.raises(UserError, match=r"acl-axial\.csv: probability table not found"):
        impute_planes(ENSEMBLE, Path(params.extract.out) / "elsewhere")


def test_zero_shot_scores_and_the_ensemble_auc_equals_the_cnns(
        setup: tuple[Params, MRNet], tmp_path: Path) -> None:
    params, model = setup
    tables = zero_shot(params)
    assert set(tables) == {"sagittal", "ensemble"}

    # The sagittal probabilities: the checkpoint's CNN on each prepared test series.
    base = prepared_dir(params) / "sagittal"
    index = json.loads((base / "test.json").read_text())
    slices = torch.from_numpy(np.load(base / "test.npy"))
    starts = np.cumsum([0, *index["counts"]])
    with torch.inference_mode():
        logits = [model(normalize(slices[a:b], torch.tensor([b - a])),
                        torch.tensor([b - a])).item() for a, b in pairwise(starts)]
    cnn = 1 / (1 + np.exp(-np.array(logits, dtype=np.float64)))
    assert len(set(cnn.round(8))) == len(cnn) == 6  # no ties: the AUC check below can fail
    # The ensemble's: its logistic with axial and coronal at their tune-split means.
    z = (ENSEMBLE["intercept"] + ENSEMBLE["coef"]["sagittal"] * cnn
         + sum(ENSEMBLE["coef"][p] * np.mean(v["tune"]) for p, v in PLANE_PROBS.items()))
    ensemble = 1 / (1 + np.exp(-z))
    labels = read_labels_table(prepared_dir(params) / "labels.csv").set_index("case_id")
    for task in KNEEMRI_TASKS:
        for model_name, want in (("sagittal", cnn), ("ensemble", ensemble)):
            df = tables[model_name][task]
            assert df["case_id"].tolist() == index["case_ids"]
            assert (df["split"] == "test").all()
            assert df["prob"].to_numpy() == pytest.approx(want, abs=1e-6)
            assert df["label"].tolist() == labels.loc[index["case_ids"], task].astype(int).tolist()

    # Through the files the zero-shot stage writes and the evaluate stage reads: the same AUC
    # and, on the same bootstrap draws, the same interval.
    read = {}
    for model_name, key in (("sagittal", "zero_shot"), ("ensemble", "zero_shot_ensemble")):
        read[key] = {}
        for task in KNEEMRI_TASKS:
            path = table_path(tmp_path, task, model_name)
            write_probs(path, tables[model_name][task])
            read[key][task] = read_probs(path, TABLE_SPLITS, require="test")
    metrics = evaluate_external(read, 200, 0.95, 0)
    for task in KNEEMRI_TASKS:
        assert metrics["zero_shot"][task]["auc"] is not None
        assert 0 < metrics["zero_shot"][task]["n_pos"] < metrics["zero_shot"][task]["n"]
        assert metrics["zero_shot_ensemble"][task] == metrics["zero_shot"][task]
