"""Stage validate: check data.root against the MRNet-v1.0 contract; write reports/dataset.json.

On bad data it stops with one ``error:`` line before writing anything, so the previous report
stays in place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet import PLANES, SPLITS, TASKS
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import write_json
from mrnet.core.provenance import is_synthetic
from mrnet.data.reader import dataset_fingerprint
from mrnet.data.validate import validate_dataset
from mrnet.evaluation.report import DATASET_REPORT

log = logging.getLogger("stages.validate")

REPORT = DATASET_REPORT


@cli
def main() -> None:
    """Validate the configured dataset and write its report."""
    params = load_params()
    root = Path(params.data.root)
    log.info("validating data.root=%s (%s)", root, root.resolve())
    report = validate_dataset(root)
    for split in SPLITS:
        r = report[split]
        log.info("%s: %d exams; prevalence %s; slices %s", split, r["exams"],
                 ", ".join(f"{t} {r[t]['prevalence']:.1%}" for t in TASKS),
                 ", ".join(f"{p} {r[p]['slices_min']}-{r[p]['slices_max']} ({r[p]['size']})"
                           for p in PLANES))
    # What the models trained on this data will record (mrnet.core.provenance).
    report["fingerprint"] = dataset_fingerprint(root)
    report["synthetic"] = is_synthetic(root)
    log.info("fingerprint %s; %s", report["fingerprint"][:12],
             "synthetic phantoms" if report["synthetic"] else "not the synthetic phantoms")
    write_json(REPORT, report)
    log.info("wrote %s", REPORT)


if __name__ == "__main__":
    main()
