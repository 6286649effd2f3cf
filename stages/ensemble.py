"""ensemble@{task}: logistic regression over the task's three plane probabilities."""

from __future__ import annotations

import argparse
import logging

from mrnet import TASKS
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.training.ensemble import run_ensemble

log = logging.getLogger("stages.ensemble")


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS)
    args = parser.parse_args()
    params = load_params()
    log.info("ensemble %s: C=%s, tables from %s", args.task, params.ensemble.C,
             params.extract.out)
    run_ensemble(params, args.task)


if __name__ == "__main__":
    main()
