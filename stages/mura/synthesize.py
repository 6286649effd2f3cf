"""Stage synthesize (MURA): write the synthetic radiographs when the configured data is synthetic.

If ``data.root`` is ``synthesize.out/MURA-v1.1`` the studies are generated there. Otherwise
``data.root`` points at real data and this stage writes only ``synthesize.out/README.txt``:
nothing synthetic is generated or mixed in, and the user's folder is never touched.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mrnet.core.errors import cli
from mrnet.core.io import check_output_dir, remove_except, replace_with_note
from mrnet.mura import DATASET_NAME
from mrnet.mura.config import load_params
from mrnet.mura.synthetic import generate

log = logging.getLogger("stages.mura.synthesize")


@cli
def main() -> None:
    params = load_params()
    cfg = params.synthesize
    out = Path(cfg.out).resolve()
    target = out / DATASET_NAME
    data_root = Path(params.data.root).resolve()
    log.info("synthesize config: %s; data.root: %s", dataclasses.asdict(cfg), params.data.root)
    check_output_dir(out, "synthesize.out", data_root, target, "mura/data/synthetic")
    if data_root == target:
        # generate() swaps the new dataset in whole; the old one stays until then.
        counts = generate(target, cfg)
        remove_except(out, DATASET_NAME)
        log.info("wrote %s synthetic studies to %s", counts, target)
    else:
        replace_with_note(out, "Synthetic radiographs were skipped: data.root points at "
                          f"{params.data.root}, not at {Path(cfg.out) / DATASET_NAME}.\n")
        log.info("data.root is %s: synthetic studies skipped", params.data.root)


if __name__ == "__main__":
    main()
