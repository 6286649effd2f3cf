"""The per-task ensemble: logistic regression over the three planes' CNN probabilities."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import pandas as pd
from sklearn.linear_model import LogisticRegression

from mrnet import PLANES
from mrnet.config import Params
from mrnet.core.errors import UserError
from mrnet.core.io import write_json
from mrnet.core.provenance import provenance
from mrnet.core.stats import (binary_metrics, ensemble_probs, finite_or_none, prior_shift,
                              youden_threshold)
from mrnet.core.tables import fit_split, join_tables, make_probs, read_probs, write_probs
from mrnet.data.reader import dataset_fingerprint

log = logging.getLogger(__name__)


def join_planes(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The planes' tables of one task side by side (:func:`mrnet.core.tables.join_tables`).

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


def fit_ensemble(joined: pd.DataFrame, C: float = 1.0,
                 target_prevalence: float | None = None) -> dict:
    """Fit the logistic regression on the fit split; returns its readable parameters.

    Args:
        joined: :func:`join_planes` output.
        C: inverse regularisation strength.
        target_prevalence: move the probabilities from the fit split's prevalence to this one
            (:func:`prior_shift`); None keeps the fit prevalence.

    Returns:
        ``planes, coef, intercept, C, fit_split, n_fit, n_fit_positive, fit_prevalence,
        target_prevalence, logit_shift`` and ``operating_point``: the Youden threshold of
        the ensemble's own probabilities on the fit split (never valid), with the rule, the
        split, and the sensitivity and specificity there.
    """
    split = fit_split(joined)
    planes = planes_of(joined)
    fit = joined[joined["split"] == split]
    X, y = fit[planes].to_numpy(dtype=float), fit["label"].to_numpy(dtype=int)
    if len(set(y.tolist())) < 2:
        raise UserError(f"the {split} split has only one class for this task; "
                        "cannot fit the ensemble")
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=1000)
    lr.fit(X, y)
    fit_prevalence = float(y.mean())
    model = {"planes": planes,
             "coef": {p: float(c) for p, c in zip(planes, lr.coef_[0])},
             "intercept": float(lr.intercept_[0]), "C": C, "fit_split": split,
             "n_fit": int(len(y)), "n_fit_positive": int(y.sum()),
             "fit_prevalence": fit_prevalence, "target_prevalence": target_prevalence,
             "logit_shift": prior_shift(fit_prevalence, target_prevalence)}
    probs = ensemble_probs(model, X)
    threshold = youden_threshold(y, probs)
    at = binary_metrics(y, probs, threshold)
    # JSON has no NaN: an undefined threshold (one class) is null, and so are its rates.
    model["operating_point"] = {"threshold": finite_or_none(threshold), "rule": "youden",
                                "split": split, "sensitivity": finite_or_none(at["sensitivity"]),
                                "specificity": finite_or_none(at["specificity"])}
    return model


def run_ensemble(params: Params, task: str) -> dict:
    """Fit ``task``'s ensemble from the extract stage's tables; write its JSON and probabilities.

    Writes ``{ensemble.out}/ensemble-{task}.json`` (coefficients, intercept, fit split, the
    prevalence its probabilities are calibrated to, the operating point) and
    ``{extract.out}/ensemble-{task}.csv`` (the ensemble's probability for every exam).
    """
    probs_dir = Path(params.extract.out)
    joined = join_planes({p: read_probs(probs_dir / f"{task}-{p}.csv") for p in PLANES})
    model = fit_ensemble(joined, params.ensemble.C, params.ensemble.prevalence.get(task))
    model["provenance"] = provenance(params.data.root, dataset_fingerprint(params.data.root))
    probs = ensemble_probs(model, joined[model["planes"]].to_numpy(dtype=float))
    table = make_probs(joined["case_id"], joined["split"], joined["label"], probs)
    write_json(Path(params.ensemble.out) / f"ensemble-{task}.json", model)
    write_probs(probs_dir / f"ensemble-{task}.csv", table)
    log.info("ensemble %s: fitted on %d %s exams (prevalence %.3f), coef %s, intercept %.4f, "
             "operating point %.4f (Youden on %s)", task, model["n_fit"], model["fit_split"],
             model["fit_prevalence"], {p: round(c, 4) for p, c in model["coef"].items()},
             model["intercept"], model["operating_point"]["threshold"], model["fit_split"])
    return model
