"""Stage synthesize (MURA): write the synthetic radiographs when the configured data is synthetic.

If ``data.root`` is ``synthesize.out/MURA-v1.1`` the studies are generated there. Otherwise
``data.root`` points at real data and this stage writes only ``synthesize.out/README.txt``:
nothing synthetic is generated or mixed in, and the user's folder is never touched.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from mrnet.errors import ParamsError, cli
from mrnet.io import write_text
from mrnet.mura import DATASET_NAME
from mrnet.mura.config import load_params
from mrnet.mura.synthetic import generate

log = logging.getLogger("stages.mura.synthesize")


def _reset(out: Path, data_root: Path) -> None:
    """Empty the stage's output folder, refusing folders that would take user data with them."""
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ParamsError(f"synthesize.out ({out}) is the project folder or one above it; "
                          "point it at a folder of its own, e.g. mura/data/synthetic")
    if out in data_root.parents and data_root != out / DATASET_NAME:
        raise ParamsError(f"synthesize.out ({out}) contains data.root ({data_root}), which is "
                          "not the synthetic dataset; clearing it would delete your data")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


@cli
def main() -> None:
    params = load_params()
    cfg = params.synthesize
    out = Path(cfg.out).resolve()
    target = out / DATASET_NAME
    data_root = Path(params.data.root).resolve()
    log.info("synthesize config: %s; data.root: %s", dataclasses.asdict(cfg), params.data.root)
    _reset(out, data_root)
    if data_root == target:
        counts = generate(target, cfg)
        log.info("wrote %s synthetic studies to %s", counts, target)
    else:
        write_text(out / "README.txt",
                   "Synthetic radiographs were skipped: data.root points at "
                   f"{params.data.root}, not at {Path(cfg.out) / DATASET_NAME}.\n")
        log.info("data.root is %s: synthetic studies skipped", params.data.root)


if __name__ == "__main__":
    main()
