"""ensemble@{task}: logistic regression over the task's three plane probabilities."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.ensemble import ensemble_probs, fit_ensemble, join_planes
from mrnet.errors import cli
from mrnet.io import write_json
from mrnet.probs import read_probs, write_probs

log = logging.getLogger("stages.ensemble")


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS)
    args = parser.parse_args()
    params = load_params()
    probs_dir = Path(params.extract.out)
    paths = {p: probs_dir / f"{args.task}-{p}.csv" for p in PLANES}
    log.info("ensemble %s: C=%s, inputs %s", args.task, params.ensemble.C,
             ", ".join(map(str, paths.values())))
    joined = join_planes({p: read_probs(path) for p, path in paths.items()},
                         {p: str(path) for p, path in paths.items()})
    model = fit_ensemble(joined, params.ensemble.C)
    probs = ensemble_probs(model, joined.features)
    write_json(Path(params.ensemble.out) / f"ensemble-{args.task}.json", model)
    write_probs(probs_dir / f"ensemble-{args.task}.csv", joined.case_ids, joined.splits,
                joined.labels, probs)
    log.info("ensemble %s: fitted on %d %s exams, coef %s, intercept %.4f", args.task,
             model["n_fit"], model["fit_split"],
             {p: round(c, 4) for p, c in model["coef"].items()}, model["intercept"])


if __name__ == "__main__":
    main()
