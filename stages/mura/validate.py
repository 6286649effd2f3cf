"""Stage validate (MURA): check data.root against the MURA-v1.1 contract; write the report.

On bad data it stops with one ``error:`` line before writing anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet.core.errors import cli
from mrnet.core.io import write_json
from mrnet.mura import SPLITS
from mrnet.mura.config import load_params
from mrnet.mura.validate import validate_dataset

log = logging.getLogger("stages.mura.validate")

REPORT = Path("mura/metrics/dataset.json")


@cli
def main() -> None:
    params = load_params()
    root = Path(params.data.root)
    log.info("validating data.root=%s (%s)", root, root.resolve())
    report = validate_dataset(root)
    for split in SPLITS:
        r = report[split]
        log.info("%s: %d studies (%.1f%% abnormal), %d images, %d-%d views per study, "
                 "%d-%d x %d-%d px, modes %s", split, r["studies"], 100 * r["abnormal_fraction"],
                 r["images"], r["views_min"], r["views_max"], r["height_min"], r["height_max"],
                 r["width_min"], r["width_max"], r["modes"])
    write_json(REPORT, report)
    log.info("wrote %s", REPORT)


if __name__ == "__main__":
    main()
