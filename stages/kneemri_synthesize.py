"""kneemri_synthesize: write KneeMRI-format phantoms when kneemri.root is kneemri.synthetic.out.

With ``kneemri.enabled`` false, or ``kneemri.root`` naming a real KneeMRI folder, the stage writes
only ``{kneemri.synthetic.out}/README.txt``: nothing synthetic is generated or mixed in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mrnet.config import load_params
from mrnet.errors import ParamsError, cli
from mrnet.io import write_text

log = logging.getLogger("stages.kneemri_synthesize")


def check_folders(out: Path, root: Path) -> None:
    """Refuse an output folder whose clearing would take the project or user data with it."""
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ParamsError(f"kneemri.synthetic.out ({out}) is the project folder or one above "
                          "it; point it at a folder of its own, e.g. data/synthetic-kneemri")
    if out in root.parents:
        raise ParamsError(f"kneemri.synthetic.out ({out}) contains kneemri.root ({root}); "
                          "clearing it would delete that data. Use kneemri.root: "
                          "<kneemri.synthetic.out> for the phantoms or move the data")
    if root in out.parents:
        raise ParamsError(f"kneemri.synthetic.out ({out}) lies inside kneemri.root ({root}); "
                          "phantoms must not be written into a dataset folder")


@cli
def main() -> None:
    params = load_params()
    cfg = params.kneemri
    out, root = Path(cfg.synthetic.out).resolve(), Path(cfg.root).resolve()
    log.info("kneemri_synthesize: enabled=%s root=%s synthetic=%s", cfg.enabled, cfg.root,
             dataclasses.asdict(cfg.synthetic))
    check_folders(out, root)
    if cfg.enabled and root == out:
        import shutil

        from mrnet.kneemri_synthetic import generate_kneemri

        if out.exists():
            shutil.rmtree(out)
        generate_kneemri(out, cfg.synthetic)
        return
    from mrnet.kneemri import write_off_note

    if not cfg.enabled:
        write_off_note(out, "the KneeMRI phantom generation")
    else:
        import shutil

        if out.exists():
            shutil.rmtree(out)
        write_text(out / "README.txt", "KneeMRI phantoms were skipped: kneemri.root points at "
                   f"{cfg.root}, not at {cfg.synthetic.out}.\nNothing synthetic is generated "
                   "or mixed into that dataset.\n")
    log.info("kneemri_synthesize: phantoms skipped, wrote %s", out / "README.txt")


if __name__ == "__main__":
    main()
