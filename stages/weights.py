"""weights: record the ImageNet weights the CNNs start from, after checking their hash.

Writes ``{train.out}/pretrained.json``: with ``model.pretrained: false`` only a note (torch is
not even imported); otherwise the file name, torchvision's address and the full sha256 of the
weights in the local torch cache, refused when the sha256 does not match the hash in the name.
The train stages depend on it, so an experiment records which weights it started from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import write_json
from mrnet.core.weights import weights_record

log = logging.getLogger("stages.weights")

RECORD = "pretrained.json"


@cli
def main() -> None:
    params = load_params()
    out = Path(params.train.out) / RECORD
    log.info("weights: model.backbone=%s model.pretrained=%s -> %s", params.model.backbone,
             params.model.pretrained, out)
    record = weights_record(params.model.backbone, params.model.pretrained)
    write_json(out, record)
    if record["pretrained"]:
        log.info("weights: %s, sha256 %s (checked against its name)", record["file"],
                 record["sha256"])


if __name__ == "__main__":
    main()
