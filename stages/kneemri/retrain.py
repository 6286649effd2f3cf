"""kneemri_retrain: train one CNN per KneeMRI task on the train folders, select on valid.

Writes ``{kneemri.out}/retrained/{task}.pt`` (checkpoint) and ``{task}-retrained.csv``
(``case_id,split,label,prob`` of the valid and test folders).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli

log = logging.getLogger("stages.kneemri_retrain")


@cli
def main() -> None:
    params = load_params()
    out = Path(params.kneemri.out) / "retrained"
    if out.exists():
        shutil.rmtree(out)
    if not params.kneemri.enabled:
        from mrnet.kneemri.reader import write_off_note

        log.info("kneemri.enabled is false: skipped, wrote %s",
                 write_off_note(out, "retraining on KneeMRI"))
        return
    import torch

    from mrnet.core.tables import write_probs
    from mrnet.kneemri.reader import table_path
    from mrnet.kneemri.retrain import retrain

    torch.use_deterministic_algorithms(True, warn_only=True)
    for task, df in retrain(params).items():
        write_probs(table_path(out, task, "retrained"), df)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
