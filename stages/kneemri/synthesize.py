"""kneemri_synthesize: write KneeMRI-format phantoms when kneemri.root is kneemri.synthetic.out.

With ``kneemri.enabled`` false, or ``kneemri.root`` naming a real KneeMRI folder, the stage writes
only ``{kneemri.synthetic.out}/README.txt``: nothing synthetic is generated or mixed in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import check_output_dir, replace_with_note
from mrnet.kneemri.reader import write_off_note

log = logging.getLogger("stages.kneemri_synthesize")


@cli
def main() -> None:
    params = load_params()
    cfg = params.kneemri
    out, root = Path(cfg.synthetic.out).resolve(), Path(cfg.root).resolve()
    log.info("kneemri_synthesize: enabled=%s root=%s synthetic=%s", cfg.enabled, cfg.root,
             dataclasses.asdict(cfg.synthetic))
    check_output_dir(out, "kneemri.synthetic.out", root, out, "data/synthetic-kneemri")
    if cfg.enabled and root == out:
        from mrnet.kneemri.synthetic import generate_kneemri

        # generate_kneemri() swaps the new phantoms in whole; the old ones stay until then.
        generate_kneemri(out, cfg.synthetic)
        return
    if not cfg.enabled:
        write_off_note(out, "the KneeMRI phantom generation")
    else:
        replace_with_note(out, "KneeMRI phantoms were skipped: kneemri.root points at "
                          f"{cfg.root}, not at {cfg.synthetic.out}.\nNothing synthetic is "
                          "generated or mixed into that dataset.\n")
    log.info("kneemri_synthesize: phantoms skipped, wrote %s", out / "README.txt")


if __name__ == "__main__":
    main()
