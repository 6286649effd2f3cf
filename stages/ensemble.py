"""ensemble: per task, logistic regression over its three plane probabilities.

One process fits all three tasks (``--task`` narrows it down when run by hand); each fit
takes milliseconds, a stage of its own a few seconds of Python and DVC bookkeeping.
"""

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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, help="only this task (default: all three)")
    args = parser.parse_args()
    params = load_params()
    for task in [args.task] if args.task else TASKS:
        log.info("ensemble %s: C=%s, tables from %s", task, params.ensemble.C,
                 params.extract.out)
        run_ensemble(params, task)


if __name__ == "__main__":
    main()
