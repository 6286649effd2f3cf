"""Stage synthesize: write the synthetic knee phantoms, when the configured data is synthetic.

If ``data.root`` is ``synthesize.out/MRNet-v1.0`` the phantoms are generated there. Otherwise
the user points ``data.root`` at real data, and this stage writes only
``synthesize.out/README.txt`` saying so: nothing synthetic is generated or mixed in.

Run from the project root: ``python -m stages.synthesize``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from mrnet.config import load_params
from mrnet.errors import ParamsError, cli
from mrnet.io import write_text
from mrnet.synthetic import generate

log = logging.getLogger(__name__)

DATASET_NAME = "MRNet-v1.0"


def _reset(out: Path, data_root: Path) -> None:
    """Empty the stage's output folder, refusing folders that would take user data with them."""
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ParamsError(f"synthesize.out ({out}) is the project folder or one above it; "
                          "point it at a folder of its own, e.g. data/synthetic")
    if out in data_root.parents and data_root != out / DATASET_NAME:
        raise ParamsError(f"synthesize.out ({out}) contains data.root ({data_root}), which is "
                          "not the synthetic dataset; clearing it would delete your data. "
                          f"Use data.root: <synthesize.out>/{DATASET_NAME} or move synthesize.out")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def main() -> None:
    params = load_params()
    cfg = params.synthesize
    out = Path(cfg.out).resolve()
    target = out / DATASET_NAME
    data_root = Path(params.data.root).resolve()
    log.info("synthesize config: %s; data.root: %s", dataclasses.asdict(cfg), params.data.root)
    if data_root == target:
        _reset(out, data_root)
        log.info("generating %d train + %d valid phantom exams (%d px, %d-%d slices) in %s",
                 cfg.n_train, cfg.n_valid, cfg.image_size, cfg.slices_min, cfg.slices_max,
                 target)
        generate(target, cfg)
    else:
        _reset(out, data_root)
        write_text(out / "README.txt",
                   "Synthetic knee phantoms were skipped: data.root points at "
                   f"{params.data.root}, not at {Path(cfg.out) / DATASET_NAME}.\n"
                   "Nothing synthetic is generated or mixed into that dataset.\n")
        log.info("data.root is %s, not %s: phantoms skipped, wrote %s", params.data.root,
                 Path(cfg.out) / DATASET_NAME, out / "README.txt")


if __name__ == "__main__":
    cli(main)()
