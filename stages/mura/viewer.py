"""Stage viewer (MURA): self-contained HTML viewers of the first ``viewer.n_studies`` valid
studies: every view with its CAM overlay and probability, the study's call and label."""

from __future__ import annotations

import logging
from pathlib import Path

from mrnet.core.errors import cli
from mrnet.core.runtime import select_device
from mrnet.inference.viewer import write_pages
from mrnet.mura.config import load_params
from mrnet.mura.data import read_split
from mrnet.mura.model import CHECKPOINT, load_model
from mrnet.mura.predict import load_views, predict_studies, study_report
from mrnet.mura.viewer import study_viewer

log = logging.getLogger("stages.mura.viewer")


@cli
def main() -> None:
    params = load_params()
    cfg = params.viewer
    device = select_device(params.train.device, "train.device of mura/params.yaml")
    model, ckpt = load_model(Path(params.train.out) / CHECKPOINT, device)
    size = int(ckpt["config"]["image_size"])
    data = read_split(params.data.root, "valid")
    studies = data.studies.head(cfg.n_studies)
    pages = {}
    for _, s in studies.iterrows():
        files = [Path(p) for p in data.views.loc[data.views["study_id"] == s["study_id"], "path"]]
        views = load_views(files)
        probs = predict_studies(model, size, [views], device)[0]
        report = study_report(s["study_id"], files, probs, params.evaluate.threshold, ckpt)
        name = s["study_id"].replace("/", "_")
        pages[name] = study_viewer(model, report, views, size, device, int(s["label"]))
        log.info("study %s: P(abnormal) %.3f -> %s (label %d)", s["study_id"], report["prob"],
                 report["call"], s["label"])
    write_pages(cfg.out, pages)
    log.info("wrote %d viewers to %s", len(pages), cfg.out)


if __name__ == "__main__":
    main()
