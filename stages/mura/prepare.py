"""Stage prepare (MURA): cache both splits' views, grey, at prepare.image_size."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mrnet.core.errors import cli
from mrnet.mura.config import load_params
from mrnet.mura.prepare import prepare

log = logging.getLogger("stages.mura.prepare")


@cli
def main() -> None:
    params = load_params()
    out = Path(params.prepare.out)
    log.info("prepare: data.root=%s image_size=%d -> %s", params.data.root,
             params.prepare.image_size, out)
    if out.exists():
        shutil.rmtree(out)
    log.info("prepare: %s", prepare(params.data.root, out, params.prepare.image_size))


if __name__ == "__main__":
    main()
