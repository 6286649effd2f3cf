"""kneemri_prepare: validate the KneeMRI folder and cache it at the training resolution.

Writes ``{kneemri.out}/prepared/`` (``sagittal/{train,valid,test}.npy,.json``, ``labels.csv``,
``report.json``); on bad data it stops with one ``error:`` line naming the file or metadata line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli

log = logging.getLogger("stages.kneemri_prepare")


@cli
def main() -> None:
    params = load_params()
    cfg = params.kneemri
    out = Path(cfg.out) / "prepared"
    if not cfg.enabled:
        from mrnet.kneemri.reader import write_off_note

        log.info("kneemri.enabled is false: skipped, wrote %s",
                 write_off_note(out, "the KneeMRI validation and cache"))
        return
    from mrnet.kneemri.prepare import prepare_kneemri

    log.info("kneemri_prepare: root=%s (%s) crop=%s roi_scale=%s image_size=%d -> %s",
             cfg.root, Path(cfg.root).resolve(), cfg.crop, cfg.roi_scale,
             params.prepare.image_size, out)
    prepare_kneemri(cfg.root, out, cfg.crop, cfg.roi_scale, params.prepare.image_size)
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
