"""The per-task ensemble: joined by case id, fitted on the right split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mrnet import PLANES
from mrnet.core.errors import UserError
from mrnet.core.stats import ensemble_probs
from mrnet.core.tables import make_probs
from mrnet.training.ensemble import fit_ensemble, join_planes


def _tables(n: int = 40, seed: int = 0, tune: bool = False) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"{i:04d}" for i in range(n)]
    labels = rng.integers(0, 2, n)
    splits = ["valid" if i >= n * 3 // 4 else ("tune" if tune and i % 4 == 0 else "train")
              for i in range(n)]
    out = {}
    for k, plane in enumerate(PLANES):
        probs = np.clip(0.5 + (labels - 0.5) * (0.2 + 0.2 * k) + rng.normal(0, 0.2, n), 0, 1)
        out[plane] = make_probs(ids, splits, labels, probs, source=plane)
    return out


def _shuffled(t: pd.DataFrame, seed: int) -> pd.DataFrame:
    order = np.random.default_rng(seed).permutation(len(t))
    return t.iloc[order].reset_index(drop=True)


def test_shuffled_rows_give_the_same_coefficients() -> None:
    tables = _tables()
    a = fit_ensemble(join_planes(tables))
    tables["coronal"] = _shuffled(tables["coronal"], 1)
    b = fit_ensemble(join_planes(tables))
    assert a == b
    # the strongest plane (sagittal, the best separated here) gets the largest weight
    assert max(a["coef"], key=a["coef"].get) == "sagittal"


def test_missing_case_is_named() -> None:
    tables = _tables()
    t = tables["axial"]
    tables["axial"] = t[t["case_id"] != "0007"]
    with pytest.raises(UserError, match=r"axial: train case 0007 \(scored in coronal, "
                                        r"sagittal\) is missing"):
        join_planes(tables)


def test_label_disagreement_is_an_error() -> None:
    tables = _tables()
    t = tables["sagittal"]
    t.loc[3, "label"] = 1 - t.loc[3, "label"]
    with pytest.raises(UserError, match=r"sagittal: train case 0003 has label \d but axial says"):
        join_planes(tables)


def test_fits_on_tune_split_when_present() -> None:
    joined = join_planes(_tables(tune=True))
    model = fit_ensemble(joined)
    assert model["fit_split"] == "tune"
    assert model["n_fit"] == int((joined["split"] == "tune").sum())
    assert fit_ensemble(join_planes(_tables()))["fit_split"] == "train"


def test_probs_match_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    joined = join_planes(_tables())
    model = fit_ensemble(joined, C=0.5)
    features = joined[list(PLANES)].to_numpy()
    train = (joined["split"] == "train").to_numpy()
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(features[train],
                                                       joined["label"].to_numpy()[train])
    np.testing.assert_allclose(ensemble_probs(model, features),
                               ref.predict_proba(features)[:, 1], rtol=1e-10)


def test_operating_point_comes_from_the_fit_split_only() -> None:
    tables = _tables()
    model = fit_ensemble(join_planes(tables))
    op = model["operating_point"]
    assert op["rule"] == "youden" and op["split"] == "train"
    joined = join_planes(tables)
    train = joined[joined["split"] == "train"]
    probs = ensemble_probs(model, train[list(PLANES)].to_numpy())
    from mrnet.core.stats import youden_threshold
    assert op["threshold"] == youden_threshold(train["label"].to_numpy(), probs)
    # Flipping every valid label changes nothing about the threshold.
    for t in tables.values():
        t.loc[t["split"] == "valid", "label"] ^= 1
    assert fit_ensemble(join_planes(tables))["operating_point"] == op


def test_prior_shift_matches_a_hand_computation() -> None:
    from mrnet.core.stats import prior_shift, with_prevalence

    # fit prevalence 0.2 -> target 0.5: logit offset log(1) - log(0.25) = log 4
    assert prior_shift(0.2, 0.5) == pytest.approx(np.log(4.0))
    assert prior_shift(0.2, None) == 0.0
    joined = join_planes(_tables())
    base = fit_ensemble(joined)
    features = joined[list(PLANES)].to_numpy()
    p = ensemble_probs(base, features)
    target = 0.45
    f = base["fit_prevalence"]
    # Bayes by hand: odds' = odds * (t / (1 - t)) / (f / (1 - f))
    odds = p / (1 - p) * (target / (1 - target)) / (f / (1 - f))
    want = odds / (1 + odds)
    shifted = with_prevalence(base, target)
    np.testing.assert_allclose(ensemble_probs(shifted, features), want, rtol=1e-10)
    np.testing.assert_allclose(ensemble_probs(fit_ensemble(joined, target_prevalence=target),
                                              features), want, rtol=1e-10)
    # The threshold moves with the probabilities: every call stays the same.
    calls = p >= base["operating_point"]["threshold"]
    assert np.array_equal(ensemble_probs(shifted, features)
                          >= shifted["operating_point"]["threshold"] - 1e-12, calls)
    back = with_prevalence(shifted, None)
    assert back["operating_point"]["threshold"] == pytest.approx(
        base["operating_point"]["threshold"])
    with pytest.raises(UserError, match=r"prevalence must be in \(0, 1\)"):
        with_prevalence(base, 1.5)
