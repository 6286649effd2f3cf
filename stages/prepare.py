"""prepare@{plane}: cache both splits of one plane at the training resolution."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from mrnet import PLANES
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.data.prepare import prepare_plane

log = logging.getLogger("stages.prepare")


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plane", required=True, choices=PLANES)
    args = parser.parse_args()
    params = load_params()
    out = Path(params.prepare.out) / args.plane
    log.info("prepare %s: data.root=%s image_size=%d -> %s", args.plane, params.data.root,
             params.prepare.image_size, out)
    if out.exists():
        shutil.rmtree(out)
    summary = prepare_plane(params.data.root, args.plane, params.prepare.out,
                            params.prepare.image_size)
    log.info("prepare %s: %s", args.plane, summary)


if __name__ == "__main__":
    main()
