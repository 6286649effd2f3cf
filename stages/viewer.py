"""Stage viewer: self-contained HTML viewers of the exams worth looking at.

Writes ``{viewer.out}/{case_id}.html`` for every valid exam that the evaluate stage's error
report (``reports/errors.json``) lists, in case-id order, so each link in
``reports/errors.md`` opens its exam:
the three planes' slices with sliders, each task's CAM overlay, the ensemble and per-plane
probabilities from the trained models, and the reference labels. Open them from disk.
"""

from __future__ import annotations

import logging

from mrnet import PLANES
from mrnet.config import load_params
from mrnet.core.errors import UserError, cli
from mrnet.core.runtime import select_device
from mrnet.data.reader import list_exams, load_series
from mrnet.evaluation.report import ERRORS_JSON, error_cases
from mrnet.inference.predict import exam_report, predict_volumes, predictor_for
from mrnet.inference.viewer import exam_viewer, write_pages

log = logging.getLogger("stages.viewer")


@cli
def main() -> None:
    params = load_params()
    cfg = params.viewer
    wanted = error_cases(ERRORS_JSON)
    exams = [e for e in list_exams(params.data.root, "valid") if e.case_id in wanted]
    missing = sorted(wanted - {e.case_id for e in exams})
    if missing:
        raise UserError(f"{ERRORS_JSON}: valid case {missing[0]} is not in "
                        f"{params.data.root} (rerun the pipeline: the report is out of date)")
    log.info("viewer: %d valid exams of %s listed in %s, first task %s -> %s", len(exams),
             params.data.root, ERRORS_JSON, cfg.task, cfg.out)
    # The pipeline's own models on the pipeline's own data: phantom-trained models are what
    # the demo has, so they are shown (the pages say what the models were trained on).
    predictor = predictor_for(params, select_device(params.train.device), allow_synthetic=True)
    volumes = [{p: load_series(e.paths[p]) for p in PLANES} for e in exams]
    prediction = predict_volumes(predictor, volumes, [e.case_id for e in exams])
    pages = {}
    for i, exam in enumerate(exams):
        report = exam_report(predictor, prediction, i, exam.paths)
        pages[exam.case_id] = exam_viewer(predictor, exam.case_id, volumes[i], report, cfg.task,
                                          exam.labels)
        log.info("exam %s: %s", exam.case_id,
                 ", ".join(f"{t} {r['prob']:.3f}" for t, r in report["tasks"].items()))
    write_pages(cfg.out, pages)
    log.info("wrote %d viewers to %s", len(pages), cfg.out)


if __name__ == "__main__":
    main()
