"""Stage train (MURA): the per-view CNN; the checkpoint is {train.out}/model.pt."""

from __future__ import annotations

import logging

import torch

from mrnet.core.errors import cli
from mrnet.mura.config import load_params
from mrnet.mura.train import train_mura

log = logging.getLogger("stages.mura.train")


@cli
def main() -> None:
    params = load_params()
    torch.use_deterministic_algorithms(True, warn_only=True)
    log.info("train: %s", train_mura(params))


if __name__ == "__main__":
    main()
