"""The per-task ensemble: logistic regression over the three planes' CNN probabilities."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from mrnet import PLANES
from mrnet.config import Params
from mrnet.errors import UserError
from mrnet.io import write_json
from mrnet.probs import fit_split, join_tables, make_probs, read_probs, write_probs

log = logging.getLogger(__name__)


def join_planes(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The planes' tables of one task side by side (:func:`mrnet.probs.join_tables`).

    Returns:
        Columns ``case_id, split, label`` and one probability column per plane, in
        :data:`mrnet.PLANES` order, rows sorted by split then case id.
    """
    unknown = sorted(set(tables) - set(PLANES))
    if unknown:
        raise ValueError(f"unknown planes {unknown}")
    return join_tables({p: tables[p] for p in PLANES if p in tables})


def planes_of(joined: pd.DataFrame) -> list[str]:
    """The plane columns of a joined table, in :data:`mrnet.PLANES` order."""
    return [p for p in PLANES if p in joined.columns]


def fit_ensemble(joined: pd.DataFrame, C: float = 1.0) -> dict:
    """Fit the logistic regression on the fit split; returns its readable parameters."""
    split = fit_split(joined)
    planes = planes_of(joined)
    fit = joined[joined["split"] == split]
    X, y = fit[planes].to_numpy(dtype=float), fit["label"].to_numpy(dtype=int)
    if len(set(y.tolist())) < 2:
        raise UserError(f"the {split} split has only one class for this task; "
                        "cannot fit the ensemble")
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=1000)
    lr.fit(X, y)
    return {"planes": planes,
            "coef": {p: float(c) for p, c in zip(planes, lr.coef_[0])},
            "intercept": float(lr.intercept_[0]), "C": C, "fit_split": split,
            "n_fit": int(len(y)), "n_fit_positive": int(y.sum())}


def ensemble_probs(model: Mapping, features: np.ndarray) -> np.ndarray:
    """Probabilities of the fitted ensemble for (N, planes) plane probabilities."""
    coef = np.array([model["coef"][p] for p in model["planes"]], dtype=float)
    z = np.asarray(features, dtype=float) @ coef + float(model["intercept"])
    return 1.0 / (1.0 + np.exp(-z))


def run_ensemble(params: Params, task: str) -> dict:
    """Fit ``task``'s ensemble from the extract stage's tables; write its JSON and probabilities.

    Writes ``{ensemble.out}/ensemble-{task}.json`` (coefficients, intercept, fit split) and
    ``{extract.out}/ensemble-{task}.csv`` (the ensemble's probability for every exam).
    """
    probs_dir = Path(params.extract.out)
    joined = join_planes({p: read_probs(probs_dir / f"{task}-{p}.csv") for p in PLANES})
    model = fit_ensemble(joined, params.ensemble.C)
    probs = ensemble_probs(model, joined[model["planes"]].to_numpy(dtype=float))
    table = make_probs(joined["case_id"], joined["split"], joined["label"], probs)
    write_json(Path(params.ensemble.out) / f"ensemble-{task}.json", model)
    write_probs(probs_dir / f"ensemble-{task}.csv", table)
    log.info("ensemble %s: fitted on %d %s exams, coef %s, intercept %.4f", task,
             model["n_fit"], model["fit_split"],
             {p: round(c, 4) for p, c in model["coef"].items()}, model["intercept"])
    return model
