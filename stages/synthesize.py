"""Stage synthesize: write the synthetic knee phantoms, when the configured data is synthetic.

If ``data.root`` is ``synthesize.out/MRNet-v1.0`` the phantoms are generated there. Otherwise
the user points ``data.root`` at real data, and this stage writes only
``synthesize.out/README.txt`` saying so: nothing synthetic is generated or mixed in.

Run from the project root: ``python -m stages.synthesize``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import check_output_dir, remove_except, replace_with_note
from mrnet.data.synthetic import generate

log = logging.getLogger(__name__)

DATASET_NAME = "MRNet-v1.0"


def main() -> None:
    params = load_params()
    cfg = params.synthesize
    out = Path(cfg.out).resolve()
    target = out / DATASET_NAME
    data_root = Path(params.data.root).resolve()
    log.info("synthesize config: %s; data.root: %s", dataclasses.asdict(cfg), params.data.root)
    check_output_dir(out, "synthesize.out", data_root, target, "data/synthetic")
    if data_root == target:
        log.info("generating %d train + %d valid phantom exams (%d px, %d-%d slices) in %s",
                 cfg.n_train, cfg.n_valid, cfg.image_size, cfg.slices_min, cfg.slices_max,
                 target)
        # generate() swaps the new dataset in whole; the old one stays until then.
        generate(target, cfg)
        remove_except(out, DATASET_NAME)
    else:
        note = replace_with_note(
            out, "Synthetic knee phantoms were skipped: data.root points at "
            f"{params.data.root}, not at {Path(cfg.out) / DATASET_NAME}.\n"
            "Nothing synthetic is generated or mixed into that dataset.\n")
        log.info("data.root is %s, not %s: phantoms skipped, wrote %s", params.data.root,
                 Path(cfg.out) / DATASET_NAME, note)


if __name__ == "__main__":
    cli(main)()
