"""Stage evaluate: valid-split metrics, curves and reports of every model of every task.

Reads ``{extract.out}/{task}-{plane}.csv``, ``{extract.out}/ensemble-{task}.csv``, where present
``{multitask.out}/multitask-{task}.csv``, and the DVCLive learning curves of the models that
ran; writes

- ``metrics/{task}.json`` and ``metrics/mean.json``: the headline that ``dvc metrics show``
  and ``dvc exp show`` display (the ensemble's AUC with CI, the multitask AUC, the ensemble's
  operating point and its sensitivity/specificity there; the mean AUCs);
- ``reports/metrics.json`` and ``reports/metrics.md``: every model's figures (AUC with CI,
  paired AUC difference to the ensemble, average precision, calibration, figures at 0.5 and
  at the operating point);
- ``reports/model-card.md``: intended use, training data and prevalences (from
  ``reports/dataset.json``), the selection protocol, valid AUCs and the operating point with
  intervals, calibration, known limits; its numbers are those of ``reports/metrics.json``;
- ``reports/errors.md`` and ``reports/errors.json``: per task the valid exams the ensemble
  gets most wrong at its operating point, linked to their viewer pages (the viewer stage
  renders exactly these exams);
- ``plots/{roc,pr,calibration}/{task}.csv`` and ``plots/learning/{metric}.csv``: long tables
  (one ``model`` column) for dvc.yaml's top-level ``plots:``; ``plots/roc-{task}.png``.

Every input is read and checked, and every number computed, before the first file is written,
so bad input ends in one ``error:`` line and leaves the previous outputs untouched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.core.errors import cli
from mrnet.core.io import write_json, write_text
from mrnet.core.plots import (plot_roc, pr_table, read_dvclive_series, reliability_table,
                              roc_table, write_table)
from mrnet.core.stats import reliability
from mrnet.core.tables import read_probs, rows
from mrnet.evaluation.metrics import (evaluate_all, headline, largest_errors, metrics_table,
                                      operating_point)
from mrnet.evaluation.report import (DATASET_REPORT, ERRORS_JSON, REPORTS, errors_markdown,
                                     metrics_markdown, model_card, read_json)

log = logging.getLogger("stages.evaluate")

METRICS = Path("metrics")
PLOTS = Path("plots")
# DVCLive series drawn as learning curves: file under plots/metrics -> (csv name, column).
LEARNING = {"val/auc.tsv": ("val_auc", "auc"), "val/loss.tsv": ("val_loss", "loss"),
            "train/loss.tsv": ("train_loss", "loss")}


def model_files(probs_dir: Path, task: str,
                extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """The probability table of each model of ``task``, in plot and report order.

    Args:
        probs_dir: ``extract.out``.
        task: the diagnosis.
        extra: optional models beyond the planes and the ensemble, name -> folder; a model is
            included when ``{folder}/{name}-{task}.csv`` exists (a disabled one has none).

    Returns:
        model name -> CSV path: the planes and "ensemble" always (a missing one is an error
        when read), then each extra model that has a table.
    """
    files = {plane: probs_dir / f"{task}-{plane}.csv" for plane in PLANES}
    files["ensemble"] = probs_dir / f"ensemble-{task}.csv"
    for name, folder in (extra or {}).items():
        path = Path(folder) / f"{name}-{task}.csv"
        if path.is_file():
            files[name] = path
    return files


def learning_dirs(multitask_out: Path) -> dict[str, Path]:
    """The DVCLive folder of every model that may have run: name -> folder."""
    dirs = {f"{t}-{p}": Path("dvclive") / f"{t}-{p}" for t in TASKS for p in PLANES}
    dirs["multitask"] = multitask_out / "live"
    return dirs


def learning_curves(dirs: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    """Learning curves of the models that have them: csv name -> ``model, i, step, value``."""
    out: dict[str, list[pd.DataFrame]] = {name: [] for name, _ in LEARNING.values()}
    for model, folder in dirs.items():
        for rel, (name, column) in LEARNING.items():
            path = folder / "plots" / "metrics" / rel
            if not path.is_file():
                continue
            series = read_dvclive_series(path, column)
            out[name].append(series.assign(model=model, i=range(len(series))))
    cols = ["model", "i", "step", "value"]
    return {name: (pd.concat(parts, ignore_index=True)[cols] if parts else
                   pd.DataFrame(columns=cols)) for name, parts in out.items()}


def _results_table(head: Mapping[str, Mapping[str, Any]]) -> str:
    """The headline, one line per task, for the log."""
    def fmt(v: Any) -> str:
        return "  n/a" if v is None else f"{v:.3f}"

    lines = [f"{'task':<10}{'ensemble AUC [CI]':>26}{'multitask':>11}{'op':>8}"
             f"{'sens@op':>9}{'spec@op':>9}"]
    for task, r in head.items():
        ci = (f"{fmt(r['auc'])} [{fmt(r['auc_ci_low'])}, {fmt(r['auc_ci_high'])}]"
              if "auc_ci_low" in r else fmt(r["auc"]))
        lines.append(f"{task:<10}{ci:>26}{fmt(r.get('multitask_auc')):>11}"
                     f"{fmt(r.get('operating_point')) if 'operating_point' in r else '':>8}"
                     f"{fmt(r['sensitivity_at_operating_point']) if task in TASKS else '':>9}"
                     f"{fmt(r['specificity_at_operating_point']) if task in TASKS else '':>9}")
    return "\n".join(lines)


@cli
def main() -> None:
    """Evaluate every model of every task on the valid split; write metrics, plots, reports."""
    params = load_params()
    cfg = params.evaluate
    probs_dir = Path(params.extract.out)
    multitask_out = Path(params.multitask.out)
    log.info("evaluate: bootstrap=%d ci=%.3g seed=%d n_errors=%d; tables from %s",
             cfg.bootstrap, cfg.ci, cfg.seed, cfg.n_errors, probs_dir)

    extra = {"multitask": multitask_out}
    tables = {task: {name: read_probs(path)
                     for name, path in model_files(probs_dir, task, extra).items()}
              for task in TASKS}
    for task in TASKS:
        for name, table in tables[task].items():
            counts = table["split"].value_counts().sort_index()
            log.info("%s/%s: %d rows (%s)", task, name, len(table),
                     ", ".join(f"{s} {n}" for s, n in counts.items()))

    report = evaluate_all(tables, cfg.bootstrap, cfg.ci, cfg.seed)
    head = headline(report)
    valid = {task: {name: (v["label"].to_numpy(), v["prob"].to_numpy())
                    for name, v in ((n, rows(t, "valid")) for n, t in tables[task].items())}
             for task in TASKS}
    thresholds = {task: operating_point(tables[task]["ensemble"]) for task in TASKS}
    errors = {task: largest_errors(tables[task]["ensemble"], thresholds[task][0], cfg.n_errors)
              for task in TASKS}
    viewer_href = Path(os.path.relpath(params.viewer.out, REPORTS)).as_posix()
    curves = learning_curves(learning_dirs(multitask_out))
    dataset = read_json(DATASET_REPORT, "the validate stage's report; run `dvc repro validate`")
    ensembles = {task: read_json(Path(params.ensemble.out) / f"ensemble-{task}.json",
                                 "the ensemble; run `dvc repro ensemble`") for task in TASKS}
    card = model_card(report, dataset, ensembles, params.data.tune_fraction, cfg.ci)

    # Plots and reports first, the headline metrics last: a run killed half way leaves the old
    # metrics, not new numbers next to old plots.
    for task in TASKS:
        roc = roc_table(valid[task])
        write_table(PLOTS / "roc" / f"{task}.csv", roc)
        write_table(PLOTS / "pr" / f"{task}.csv", pr_table(valid[task]))
        write_table(PLOTS / "calibration" / f"{task}.csv", reliability_table(
            {name: reliability(*lp) for name, lp in valid[task].items()}))
        plot_roc(task, {name: (g["fpr"].to_numpy(), g["tpr"].to_numpy(),
                               report[task][name]["auc"] or float("nan"))
                        for name, g in roc.groupby("model", sort=False)},
                 PLOTS / f"roc-{task}.png")
    for name, table in curves.items():
        write_table(PLOTS / "learning" / f"{name}.csv", table)
    write_json(ERRORS_JSON, {task: errors[task].to_dict("records") for task in TASKS})
    write_text(REPORTS / "errors.md", errors_markdown(errors, thresholds, viewer_href))
    write_text(REPORTS / "metrics.md", metrics_markdown(metrics_table(report), cfg.ci))
    write_text(REPORTS / "model-card.md", card)
    write_json(REPORTS / "metrics.json", report)
    for name, values in head.items():
        write_json(METRICS / f"{name}.json", values)
    log.info("wrote %s/{%s,mean}.json, %s/, %s/{roc,pr,calibration,learning}/", METRICS,
             ",".join(TASKS), REPORTS, PLOTS)
    log.info("valid headline (ensemble; op = operating point chosen on the fit split) [%g%% CI]:"
             "\n%s", 100 * cfg.ci, _results_table(head))


if __name__ == "__main__":
    main()
