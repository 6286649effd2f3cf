"""train@{task}-{plane}: train one MRNet CNN; the checkpoint is models/{task}-{plane}.pt."""

from __future__ import annotations

import argparse

import torch

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.errors import cli
from mrnet.train import train_model


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--plane", required=True, choices=PLANES)
    args = parser.parse_args()
    params = load_params()
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_model(params, args.task, args.plane)


if __name__ == "__main__":
    main()
