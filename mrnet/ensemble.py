"""The per-task ensemble: logistic regression over the three planes' CNN probabilities."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression

from mrnet import PLANES
from mrnet.config import Params
from mrnet.errors import UserError
from mrnet.io import write_json
from mrnet.probs import ProbTable, read_probs, write_probs

log = logging.getLogger(__name__)


class Joined(NamedTuple):
    """Plane probabilities of the same exams side by side."""

    case_ids: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,)
    features: np.ndarray  # (N, len(planes)) probabilities, columns in `planes` order
    planes: tuple[str, ...]


def join_planes(tables: Mapping[str, ProbTable], names: Mapping[str, str] | None = None) -> Joined:
    """Join the planes' tables by (split, case id), checking they cover the same exams.

    Rows come out sorted by split then case id, so the result does not depend on row order.

    Raises:
        UserError: a case is in one plane's table and not another's, or labels disagree.
            ``names`` maps plane → file name for the message.
    """
    planes = tuple(p for p in PLANES if p in tables)
    if len(planes) != len(tables):
        raise ValueError(f"unknown planes in {sorted(tables)}")
    names = names or {p: p for p in planes}
    maps = {p: {(str(s), str(c)): (int(lab), float(pr)) for c, s, lab, pr in
                zip(t.case_id, t.split, t.label, t.prob)} for p, t in tables.items()}
    keys = sorted(set().union(*maps.values()))
    for p in planes:
        missing = [k for k in keys if k not in maps[p]]
        if missing:
            split, cid = missing[0]
            others = [names[q] for q in planes if missing[0] in maps[q]]
            raise UserError(f"{names[p]}: case {cid} ({split}) is missing but present in "
                            f"{', '.join(others)}; all planes must cover the same exams")
    labels = []
    for key in keys:
        labs = {maps[p][key][0] for p in planes}
        if len(labs) != 1:
            raise UserError(f"case {key[1]} ({key[0]}) has different labels across "
                            f"{', '.join(names[p] for p in planes)}")
        labels.append(labs.pop())
    feats = np.array([[maps[p][k][1] for p in planes] for k in keys], dtype=float)
    return Joined([k[1] for k in keys], [k[0] for k in keys], np.array(labels, dtype=int),
                  feats.reshape(len(keys), len(planes)), planes)


def fit_split(joined: Joined) -> str:
    """The split the ensemble is fitted on: the tune hold-out if there is one, else train."""
    return "tune" if "tune" in joined.splits else "train"


def fit_ensemble(joined: Joined, C: float = 1.0) -> dict:
    """Fit the logistic regression on the fit split; returns its readable parameters."""
    split = fit_split(joined)
    rows = [i for i, s in enumerate(joined.splits) if s == split]
    X, y = joined.features[rows], joined.labels[rows]
    if len(set(y.tolist())) < 2:
        raise UserError(f"the {split} split has only one class for this task; "
                        "cannot fit the ensemble")
    lr = LogisticRegression(C=C, solver="lbfgs", max_iter=1000)
    lr.fit(X, y)
    return {"planes": list(joined.planes),
            "coef": {p: float(c) for p, c in zip(joined.planes, lr.coef_[0])},
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
    paths = {p: probs_dir / f"{task}-{p}.csv" for p in PLANES}
    joined = join_planes({p: read_probs(path) for p, path in paths.items()},
                         {p: str(path) for p, path in paths.items()})
    model = fit_ensemble(joined, params.ensemble.C)
    write_json(Path(params.ensemble.out) / f"ensemble-{task}.json", model)
    write_probs(probs_dir / f"ensemble-{task}.csv", joined.case_ids, joined.splits,
                joined.labels, ensemble_probs(model, joined.features))
    log.info("ensemble %s: fitted on %d %s exams, coef %s, intercept %.4f", task,
             model["n_fit"], model["fit_split"],
             {p: round(c, 4) for p, c in model["coef"].items()}, model["intercept"])
    return model
