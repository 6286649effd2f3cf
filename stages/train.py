"""train@{task}-{plane}: train one MRNet CNN; the checkpoint is models/{task}-{plane}.pt.

With ``train.processes`` > 1 (in params.yaml or the task's section) the stage relaunches
itself under ``torchrun`` for data-parallel training; only process 0 writes files.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.core.distributed import shutdown
from mrnet.core.errors import cli
from mrnet.training.cnn import train_model

log = logging.getLogger("stages.train")


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--plane", required=True, choices=PLANES)
    args = parser.parse_args()
    params = load_params()
    processes = params.train_for(args.task).processes
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "stages.train",
               "--task", args.task, "--plane", args.plane]
        log.info("relaunching under torchrun: %s", " ".join(cmd))
        sys.stdout.flush()
        os.execv(sys.executable, cmd)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        train_model(params, args.task, args.plane)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
