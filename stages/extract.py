"""extract@{task}-{plane}: per-exam probabilities of one CNN for the train and valid splits."""

from __future__ import annotations

import argparse

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.training.extract import extract_probs


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--plane", required=True, choices=PLANES)
    args = parser.parse_args()
    extract_probs(load_params(), args.task, args.plane)


if __name__ == "__main__":
    main()
