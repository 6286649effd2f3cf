"""MURA study metrics: Cohen's kappa and the per-type table against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mrnet.core.stats import percentile_ci
from mrnet.mura.evaluate import (binary_kappa, bootstrap_kappas, format_table, metrics_json,
                                 per_type_table, study_metrics)


@pytest.mark.parametrize("seed", range(5))
def test_kappa_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=37)
    calls = np.where(rng.random(37) < 0.7, labels, 1 - labels)
    assert binary_kappa(labels, calls) == pytest.approx(cohen_kappa_score(labels, calls), abs=1e-12)


def test_kappa_edge_cases() -> None:
    assert binary_kappa([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0
    assert binary_kappa([0, 1, 1, 0], [1, 0, 0, 1]) == -1.0
    # the model calls everything normal: agreement is exactly chance
    assert binary_kappa([0, 1, 1, 0], [0, 0, 0, 0]) == pytest.approx(
        cohen_kappa_score([0, 1, 1, 0], [0, 0, 0, 0])) == 0.0
    # both raters constant and equal: chance agreement is 1, kappa undefined
    assert math.isnan(binary_kappa([1, 1, 1], [1, 1, 1]))


def test_bootstrap_kappas_are_kappas_of_the_resamples() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=25)
    calls = np.where(rng.random(25) < 0.8, labels, 1 - labels)
    got = bootstrap_kappas(labels, calls, 40, seed=[7, 1])
    idx = np.random.default_rng([7, 1]).integers(0, 25, size=(40, 25))
    for k, row in enumerate(idx):
        if len(set(labels[row])) == 1 and len(set(calls[row])) == 1:
            assert math.isnan(got[k])
        else:
            assert got[k] == pytest.approx(cohen_kappa_score(labels[row], calls[row]), abs=1e-12)


def hand_built() -> pd.DataFrame:
    """Valid studies of three types with probabilities chosen by hand."""
    rows = [
        # XR_ELBOW: one error each way
        ("XR_ELBOW/patient1/study1_positive", "XR_ELBOW", 1, 0.90),
        ("XR_ELBOW/patient2/study1_positive", "XR_ELBOW", 1, 0.40),
        ("XR_ELBOW/patient3/study1_negative", "XR_ELBOW", 0, 0.20),
        ("XR_ELBOW/patient4/study1_negative", "XR_ELBOW", 0, 0.70),
        ("XR_ELBOW/patient5/study1_negative", "XR_ELBOW", 0, 0.10),
        # XR_WRIST: all right; 0.5 exactly is normal (abnormal means > 0.5)
        ("XR_WRIST/patient6/study1_positive", "XR_WRIST", 1, 0.80),
        ("XR_WRIST/patient7/study1_negative", "XR_WRIST", 0, 0.50),
        ("XR_WRIST/patient8/study1_negative", "XR_WRIST", 0, 0.30),
        # XR_HAND: one class only, AUC undefined
        ("XR_HAND/patient9/study1_negative", "XR_HAND", 0, 0.60),
        ("XR_HAND/patient10/study1_negative", "XR_HAND", 0, 0.20),
    ]
    return pd.DataFrame(rows, columns=["study_id", "study_type", "label", "prob"])


def test_per_type_table_matches_sklearn_on_hand_built_studies() -> None:
    studies = hand_built()
    table = per_type_table(studies, threshold=0.5, n_boot=200, ci=0.95, seed=0)
    assert table.index.tolist() == ["XR_ELBOW", "XR_HAND", "XR_WRIST", "all"]
    for name, sub in [*studies.groupby("study_type"), ("all", studies)]:
        calls = (sub["prob"] > 0.5).astype(int)
        row = table.loc[name]
        assert row["kappa"] == pytest.approx(cohen_kappa_score(sub["label"], calls), abs=1e-12)
        if sub["label"].nunique() == 2:
            assert row["auc"] == pytest.approx(roc_auc_score(sub["label"], sub["prob"]))
        else:
            assert math.isnan(row["auc"])
        assert row["n_studies"] == len(sub) and row["n_abnormal"] == sub["label"].sum()
    elbow = table.loc["XR_ELBOW"]
    assert (elbow["sensitivity"], elbow["specificity"], elbow["accuracy"]) == (0.5, 2 / 3, 0.6)
    assert table.loc["XR_WRIST", "kappa"] == 1.0 and table.loc["XR_WRIST", "accuracy"] == 1.0
    assert table.loc["XR_HAND", "kappa"] == 0.0  # one call wrong, the labels one class
    assert math.isnan(table.loc["XR_HAND", "sensitivity"])


def test_confidence_intervals_come_from_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=60)
    probs = np.clip(labels * 0.3 + rng.random(60) * 0.7, 0, 1)
    m = study_metrics(labels, probs, 0.5, 300, 0.9, seed=[1, 2])
    lo, hi = percentile_ci(bootstrap_kappas(labels, probs > 0.5, 300, [1, 2]), 0.9)
    assert (m["kappa_ci_low"], m["kappa_ci_high"]) == (lo, hi)
    assert m["kappa_ci_low"] < m["kappa"] < m["kappa_ci_high"]
    assert m["auc_ci_low"] < m["auc"] < m["auc_ci_high"]


def test_metrics_json_rounds_and_nulls_undefined_values() -> None:
    table = per_type_table(hand_built(), 0.5, 50, 0.95, 0)
    out = metrics_json(table, view_auc=0.71234567, threshold=0.5)
    assert out["study"]["kappa"] == round(table.loc["all", "kappa"], 4)
    assert set(out["per_type"]) == {"XR_ELBOW", "XR_HAND", "XR_WRIST"}
    assert out["per_type"]["XR_HAND"]["auc"] is None
    assert out["view"] == {"auc": 0.7123} and out["threshold"] == 0.5
    text = format_table(table)
    assert "| XR_HAND | 2 | 0 | n/a [n/a, n/a] |" in text
