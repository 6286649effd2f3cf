"""kneemri_zero_shot: the trained ACL sagittal CNN and ACL ensemble on the KneeMRI test folders.

Writes ``{kneemri.out}/zero_shot/{task}-{sagittal,ensemble}.csv`` (``case_id,split,label,prob``)
for the tasks injury and complete.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli

log = logging.getLogger("stages.kneemri_zero_shot")


@cli
def main() -> None:
    params = load_params()
    out = Path(params.kneemri.out) / "zero_shot"
    if not params.kneemri.enabled:
        from mrnet.kneemri.reader import write_off_note

        log.info("kneemri.enabled is false: skipped, wrote %s",
                 write_off_note(out, "zero-shot scoring of KneeMRI"))
        return
    import torch

    from mrnet.core.tables import write_probs
    from mrnet.kneemri.reader import table_path
    from mrnet.kneemri.zero_shot import zero_shot

    torch.use_deterministic_algorithms(True, warn_only=True)
    tables = zero_shot(params)
    if out.exists():
        shutil.rmtree(out)
    for model, per_task in tables.items():
        for task, df in per_task.items():
            write_probs(table_path(out, task, model), df)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
