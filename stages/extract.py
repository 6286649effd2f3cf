"""extract: per-exam probabilities of the nine CNNs for the train and valid splits.

One process scores all nine (``--task`` / ``--plane`` narrow it down when run by hand): nine
stages would each pay for Python, torch's import and DVC's bookkeeping, which cost more than
scoring a CNN does at the demo's size.
"""

from __future__ import annotations

import argparse

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.training.extract import extract_all


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, help="only this task's CNNs (default: all)")
    parser.add_argument("--plane", choices=PLANES, help="only this plane's CNNs (default: all)")
    args = parser.parse_args()
    extract_all(load_params(), [args.task] if args.task else TASKS,
                [args.plane] if args.plane else PLANES)


if __name__ == "__main__":
    main()
