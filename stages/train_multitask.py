"""train_multitask: the three-plane, three-task network (or, when disabled, only a note)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import write_text
from mrnet.training.multitask import train_multitask

log = logging.getLogger("stages.train_multitask")


@cli
def main() -> None:
    params = load_params()
    out = Path(params.multitask.out)
    if out.exists():
        shutil.rmtree(out)
    if not params.multitask.enabled:
        write_text(out / "README.txt", "multitask.enabled is false: the multitask network was "
                   "not trained and is left out of metrics and plots.\n")
        log.info("multitask.enabled is false: skipped, wrote %s", out / "README.txt")
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_multitask(params)


if __name__ == "__main__":
    main()
