"""The per-task ensemble: joined by case id, fitted on the right split."""

from __future__ import annotations

import numpy as np
import pytest

from mrnet import PLANES
from mrnet.ensemble import ensemble_probs, fit_ensemble, join_planes
from mrnet.errors import UserError
from mrnet.probs import ProbTable


def _tables(n: int = 40, seed: int = 0, tune: bool = False) -> dict[str, ProbTable]:
    rng = np.random.default_rng(seed)
    ids = [f"{i:04d}" for i in range(n)]
    labels = rng.integers(0, 2, n)
    splits = ["valid" if i >= n * 3 // 4 else ("tune" if tune and i % 4 == 0 else "train")
              for i in range(n)]
    out = {}
    for k, plane in enumerate(PLANES):
        probs = np.clip(0.5 + (labels - 0.5) * (0.2 + 0.2 * k) + rng.normal(0, 0.2, n), 0, 1)
        out[plane] = ProbTable.from_rows(plane, ids, splits, labels, probs)
    return out


def _shuffled(t: ProbTable, seed: int) -> ProbTable:
    order = np.random.default_rng(seed).permutation(len(t))
    return ProbTable(t.source, t.case_id[order], t.split[order], t.label[order], t.prob[order])


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
    keep = t.case_id != "0007"
    tables["axial"] = ProbTable(t.source, t.case_id[keep], t.split[keep], t.label[keep],
                                t.prob[keep])
    with pytest.raises(UserError, match=r"axial: case 0007 \(train\) is missing"):
        join_planes(tables)


def test_label_disagreement_is_an_error() -> None:
    tables = _tables()
    t = tables["sagittal"]
    label = t.label.copy()
    label[3] = 1 - label[3]
    tables["sagittal"] = ProbTable(t.source, t.case_id, t.split, label, t.prob)
    with pytest.raises(UserError, match="case 0003 .* different labels"):
        join_planes(tables)


def test_fits_on_tune_split_when_present() -> None:
    joined = join_planes(_tables(tune=True))
    model = fit_ensemble(joined)
    assert model["fit_split"] == "tune"
    assert model["n_fit"] == sum(s == "tune" for s in joined.splits)
    assert fit_ensemble(join_planes(_tables()))["fit_split"] == "train"


def test_probs_match_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    joined = join_planes(_tables())
    model = fit_ensemble(joined, C=0.5)
    rows = [i for i, s in enumerate(joined.splits) if s == "train"]
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(joined.features[rows], joined.labels[rows])
    np.testing.assert_allclose(ensemble_probs(model, joined.features),
                               ref.predict_proba(joined.features)[:, 1], rtol=1e-10)
