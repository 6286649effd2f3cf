"""Stage extract (MURA): probability of every train and valid view, and of every study (the
mean over its views), as tables keyed by study id.

Writes ``{extract.out}/studies.csv`` (study_id, split, study_type, label, n_views, prob) and
``{extract.out}/views.csv`` (study_id, split, view, prob).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet.core.errors import cli
from mrnet.core.io import atomic_path
from mrnet.mura.config import load_params
from mrnet.mura.predict import extract

log = logging.getLogger("stages.mura.extract")


@cli
def main() -> None:
    params = load_params()
    out = Path(params.extract.out)
    studies, views = extract(params)
    for name, table in (("views.csv", views), ("studies.csv", studies)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    log.info("wrote %d studies and %d views to %s", len(studies), len(views), out)


if __name__ == "__main__":
    main()
